"""`recsys-mtl bench evaluate`: streaming vs exact offline evaluation, and scoring vs training throughput.

Metrics part (default): for each N in `--rows` (default 1M, 4M, 16M) x `--tasks` (64), realistic scores
(logits of a model of AUC ~0.75-0.8 on base rates 0.1%-50%, 10% of labels missing) are made in chunks
from a seed, so both modes see the same rows, and evaluated
  - streaming: `StreamingEvaluator` chunk by chunk (sums and logit histograms),
  - exact: every row in memory, then `task_metrics` (exact AUC; only N <= --exact-max-rows),
each in its own process, so its peak RSS is its own. Printed: metric rows/s (making the scores excluded),
peak RSS, and the largest |AUC streaming - AUC exact| and NE relative deviation over tasks.
Targets: streaming peak RSS flat in N (<= 2 GB at 16M x 64); AUC within 1e-4.

Scoring part (`--scoring`): one model (`--config`, default configs/demo.yaml's) on generated Parquet data,
  - training: `Trainer.fit()` samples/s (forward, backward, optimizers),
  - scoring: the unsharded evaluation model's forward pass only (inference mode) over the same batches
    held in memory, then forward + streaming statistics, then the whole `score_statistics` path (reading
    Parquet). Printed: rows/s each, scoring / training, and the metric accumulation's share of scoring time.
Targets (2 cores): scoring >= 4x training; metric accumulation <= 10% of the scoring time.

The figures are measured on whatever else runs on the machine: compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 8192


def _counts(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().upper()
        scale = {"K": 1_000, "M": 1_000_000}.get(part[-1:], 1)
        out.append(int(float(part.rstrip("KM")) * scale))
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected row counts >= 1 such as 1M,4M,16M, got {text!r}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=_counts, default=[1_000_000, 4_000_000, 16_000_000],
                   help="row counts, comma-separated, K/M suffixes (default 1M,4M,16M)")
    p.add_argument("--tasks", type=int, default=64, help="tasks (default %(default)s)")
    p.add_argument("--exact-max-rows", type=_counts, default=[4_000_000],
                   help="largest N the exact path runs at (default 4M: 16M x 64 needs ~15 GB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scoring", action="store_true", help="also profile scoring vs training throughput of a model")
    p.add_argument("--config", default=None, help="training config for --scoring (default configs/demo.yaml)")
    p.add_argument("--scoring-rows", type=int, default=200_000, help="rows generated for --scoring (default %(default)s)")
    p.add_argument("--scoring-tasks", type=int, default=32, help="tasks of the --scoring data (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=4096, help="--scoring batch size (default %(default)s)")
    p.add_argument("--train-steps", type=int, default=30, help="timed training steps for --scoring (default %(default)s)")
    p.add_argument("--worker", nargs=3, metavar=("MODE", "N", "OUT"), help=argparse.SUPPRESS)


# ---------------------------------------------------------------- metrics part


def _chunk(seed: int, index: int, rows: int, tasks: int):
    """Rows of chunk `index`: (logits, labels, mask), the same in every process."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    rates = torch.logspace(-3, torch.log10(torch.tensor(0.5)).item(), tasks)
    latent = torch.logit(rates) + 1.2 * torch.randn(rows, tasks, generator=g)
    labels = (torch.rand(rows, tasks, generator=g) < torch.sigmoid(latent)).float()
    logits = latent + 0.5 * torch.randn(rows, tasks, generator=g)
    mask = torch.rand(rows, tasks, generator=g) < 0.9
    return logits, labels, mask


def _worker(mode: str, n: int, out: Path, tasks: int, seed: int) -> None:
    import numpy as np
    import torch

    from recsys_mtl.metrics.offline import task_metrics
    from recsys_mtl.metrics.streaming_eval import StreamingEvaluator

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    making = metric = 0.0
    if mode == "streaming":
        evaluator = StreamingEvaluator(["binary"] * tasks)
        for i, start in enumerate(range(0, n, CHUNK)):
            t0 = time.perf_counter()
            rows = _chunk(seed, i, min(CHUNK, n - start), tasks)
            t1 = time.perf_counter()
            evaluator.update(*rows)
            metric += time.perf_counter() - t1
            making += t1 - t0
        t1 = time.perf_counter()
        m = evaluator.task_metrics()
        metric += time.perf_counter() - t1
    else:
        logits = torch.empty(n, tasks)
        labels = torch.empty(n, tasks)
        mask = torch.empty(n, tasks, dtype=torch.bool)
        for i, start in enumerate(range(0, n, CHUNK)):
            t0 = time.perf_counter()
            rows = _chunk(seed, i, min(CHUNK, n - start), tasks)
            t1 = time.perf_counter()
            for dst, src in zip((logits, labels, mask), rows):
                dst[start:start + len(src)] = src
            metric += time.perf_counter() - t1
            making += t1 - t0
        t1 = time.perf_counter()
        m = task_metrics(logits, labels, mask, from_logits=True)
        metric += time.perf_counter() - t1
    np.savez(out.with_suffix(".npz"), auc=m.auc, ne=m.ne)
    out.write_text(json.dumps({"mode": mode, "rows": n, "metric_s": metric, "making_s": making,
                               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               "start_rss_mb": rss_before / 1024}))


def _metrics_part(args: argparse.Namespace, tmp: Path) -> None:
    import numpy as np

    print(f"streaming vs exact evaluation, {args.tasks} tasks, scores made in chunks of {CHUNK} rows "
          "(the making is not timed); each in its own process")
    head = f"{'rows':>12}  {'mode':<9}  {'metric rows/s':>13}  {'peak RSS MB':>11}  {'max |dAUC|':>10}  {'max NE rel dev':>14}"
    print(head)
    print("-" * len(head))
    for n in args.rows:
        results = {}
        for mode in ("streaming", "exact"):
            if mode == "exact" and n > args.exact_max_rows[0]:
                print(f"{n:>12,}  {mode:<9}  {'(skipped: more than --exact-max-rows)':>40}")
                continue
            out = tmp / f"{mode}-{n}.json"
            proc = subprocess.run([sys.executable, "-m", "recsys_mtl.cli", "bench", "evaluate", "--tasks", str(args.tasks),
                                   "--seed", str(args.seed), "--worker", mode, str(n), str(out)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{n:>12,}  {mode:<9}  failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.read_text())
            r.update(np.load(out.with_suffix(".npz")))
            results[mode] = r
            dev = ne_dev = ""
            if mode == "exact" and "streaming" in results:
                s = results["streaming"]
                dev = f"{np.nanmax(np.abs(s['auc'] - r['auc'])):.2e}"
                ne_dev = f"{np.nanmax(np.abs(s['ne'] / r['ne'] - 1)):.2e}"
            print(f"{n:>12,}  {mode:<9}  {n / r['metric_s']:>13,.0f}  {r['peak_rss_mb']:>11,.0f}  {dev:>10}  {ne_dev:>14}",
                  flush=True)


# ---------------------------------------------------------------- scoring part


def _scoring_part(args: argparse.Namespace, tmp: Path) -> None:
    import torch

    from recsys_mtl.bench import CONFIGS
    from recsys_mtl.bench.model_step import bench_data
    from recsys_mtl.bench.train import framework_loop
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.config.train import TrainConfig
    from recsys_mtl.evaluate import SCORING_BATCH_SIZE
    from recsys_mtl.evaluate.scoring import eval_stream, evaluator_for, score_statistics
    from recsys_mtl.models import MultiTaskModel
    from recsys_mtl.train.distributed import init_distributed

    steps = -(-args.train_steps // 5) * 5  # timing reads the log flushes, every 5 steps
    if args.scoring_rows // args.batch_size < steps + 5:
        from recsys_mtl.config.loader import ConfigError

        raise ConfigError(f"bench evaluate: --scoring-rows {args.scoring_rows:,} make fewer than --train-steps + 5 = "
                          f"{steps + 5} batches of {args.batch_size} (one epoch is timed)")
    data = bench_data(None, tmp, rows=args.scoring_rows, tasks=args.scoring_tasks, table_scale=0.01)
    warmup = 5
    config = TrainConfig.load(args.config or str(CONFIGS / "demo.yaml"), [
        f"data.train_path={data}", f"data.spec={data / '_feature_spec.yaml'}", "data.eval_path=null",
        f"data.batch_size={args.batch_size}", f"train.max_steps={warmup + steps}", "train.epochs=1000",
        f"train.log_every={warmup}", "train.eval_every=0", "train.progress_bar=false", f"train.output_dir={tmp / 'run'}",
        "train.checkpoint.every=0", "train.checkpoint.resume=false", "train.checkpoint.at_end=false",
        "train.deterministic=false", "tracking.enabled=false"])
    spec = FeatureSpec.load(config.data.spec)
    env = init_distributed("cpu")
    training, _ = framework_loop(config, spec, env, warmup, config.train.max_steps - warmup)

    model = MultiTaskModel(spec, config.model, seed=0, device="cpu", embedding_device="cpu").eval()

    def timed(fn, repeats: int = 5) -> float:
        """The median of `repeats` timed passes after a warm-up one (a single pass moved by +-30% between runs)."""
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    print(f"\nscoring vs training: {config.model.architecture}, {spec.num_tasks} tasks, {torch.get_num_threads()} "
          f"threads; training batch {args.batch_size}")
    print(f"  training (Trainer.fit, {config.train.max_steps - warmup} timed steps): {training:>10,.0f} samples/s")
    for batch_size in dict.fromkeys([args.batch_size, SCORING_BATCH_SIZE]):  # the training batch, then scoring's
        batches = list(eval_stream(spec, data, batch_size))
        rows = sum(b.batch_size for b in batches)

        def forward_only():
            with torch.inference_mode():
                for b in batches:
                    model(b.dense, b.sparse)

        def forward_and_metrics():
            evaluator = evaluator_for(spec)
            with torch.inference_mode():
                for b in batches:
                    evaluator.update(model(b.dense, b.sparse), b.labels, b.label_mask)
            evaluator.task_metrics()

        forward_s = timed(forward_only)
        with_metrics_s = timed(forward_and_metrics)
        end_to_end_s = timed(lambda: score_statistics([model], [spec], data, batch_size))
        which = "the training batch" if batch_size == args.batch_size else "the scoring default"
        print(f"  scoring at batch {batch_size} ({which}), {rows:,} rows:")
        print(f"    forward only (inference mode):            {rows / forward_s:>10,.0f} rows/s "
              f"({rows / forward_s / training:.1f}x training)")
        print(f"    forward + streaming statistics:           {rows / with_metrics_s:>10,.0f} rows/s "
              f"({rows / with_metrics_s / training:.1f}x training; statistics "
              f"{100 * (with_metrics_s - forward_s) / with_metrics_s:.0f}% of the time)")
        print(f"    score_statistics (Parquet + forward + stats): {rows / end_to_end_s:>10,.0f} rows/s "
              f"({rows / end_to_end_s / training:.1f}x training)")


def run(args: argparse.Namespace) -> int:
    if args.worker:
        mode, n, out = args.worker
        _worker(mode, int(n), Path(out), args.tasks, args.seed)
        return 0
    from recsys_mtl.train.commands import quiet_library_logs

    quiet_library_logs()
    import logging

    logging.getLogger("recsys_mtl.train").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        _metrics_part(args, Path(tmp))
        if args.scoring:
            _scoring_part(args, Path(tmp))
    return 0
