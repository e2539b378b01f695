"""`recsys-mtl bench train`: the same model trained two ways in one process, throughputs and ratio.

- plain: a minimal TorchRec loop: the DMP-sharded model, batches read into
  memory beforehand, equal weights (sum of masked BCE), forward/backward/step.
- framework: `Trainer.fit()`: ParquetStream reading during training,
  TrainPipelineSparseDist, all-reduced per-task losses, the weighting module,
  per-step task-loss records (train_log.jsonl) and the progress accounting.

Both run the same steps on the same data; the first `--warmup` steps of each
are not timed. Runs alternate (plain, framework, plain, ...) so background load
hits both alike. Target: framework >= 90% of plain.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/synthetic.yaml", help="training config (model, optimizers)")
    p.add_argument("--data", type=Path, default=None, help="Parquet dataset with feature_spec.yaml (default: generate)")
    p.add_argument("--rows", type=int, default=200_000, help="rows to generate when --data is not given")
    p.add_argument("--tasks", type=int, default=32, help="tasks to generate when --data is not given")
    p.add_argument("--table-scale", type=float, default=0.01, help="table size factor for generated data")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3, help="runs of each loop, alternating")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _config(args: argparse.Namespace, data: Path, out: Path, steps: int):
    from recsys_mtl.config.train import TrainConfig

    overrides = [
        f"data.train_path={data}", f"data.spec={data / 'feature_spec.yaml'}", "data.eval_path=null",
        f"data.batch_size={args.batch_size}", f"train.max_steps={steps}", "train.epochs=1000",
        f"train.log_every={args.warmup}", "train.eval_every=0", "train.progress_bar=false",
        f"train.output_dir={out}", "train.checkpoint.every=0", "train.checkpoint.resume=false",
        "train.deterministic=false",
    ] + list(args.overrides)
    return TrainConfig.load(args.config, overrides)


def plain_loop(config, spec, env, batches, warmup: int, steps: int) -> float:
    """Minimal TorchRec: DMP model, fused embedding optimizer + Adam, equal weights. Samples/s."""
    import torch

    from recsys_mtl.bench.model_step import build_plain_step

    step = build_plain_step(config, spec, env, batches[: warmup + steps])
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = step()
    loss.item()
    return steps * config.data.batch_size * env.world_size / (time.perf_counter() - start)


def framework_loop(config, spec, env, warmup: int, steps: int) -> float:
    """Trainer.fit() over the Parquet stream; timed between the log flushes at `warmup` and the end."""
    from recsys_mtl.train.trainer import Trainer, TrainerCallback

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_log(self, trainer, records):
            marks[records[-1]["step"]] = time.perf_counter()

    Trainer(config, spec=spec, env=env, callbacks=[Clock()]).fit()
    first, last = min(marks), max(marks)
    if first != warmup or last != warmup + steps:
        raise RuntimeError(f"bench: expected log flushes at steps {warmup} and {warmup + steps}, got {sorted(marks)}")
    return steps * config.data.batch_size * env.world_size / (marks[last] - marks[first])


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.bench.model_step import bench_data
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.train.commands import quiet_library_logs
    from recsys_mtl.train.distributed import init_distributed
    from recsys_mtl.train.trainer import build_parquet_source

    if args.steps % args.warmup:
        raise SystemExit("bench train: --steps must be a multiple of --warmup (timing uses the log flushes)")
    quiet_library_logs()
    import logging

    logging.getLogger("recsys_mtl.train").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        data = bench_data(args.data, tmp, rows=args.rows, tasks=args.tasks, table_scale=args.table_scale)
        total = args.warmup + args.steps
        config = _config(args, data, tmp / "run", total)
        spec = FeatureSpec.load(config.data.spec)
        env = init_distributed(config.train.device)
        stream = build_parquet_source(str(data), spec, args.batch_size, env, seed=0, shuffle=config.data.shuffle,
                                      shuffle_buffer_rows=config.data.shuffle_buffer_rows,
                                      num_workers=config.data.num_workers, drop_remainder=True)
        if len(stream) < total:
            raise SystemExit(f"bench train: {data} gives {len(stream)} batches of {args.batch_size}; need {total}")
        batches = [b for _, b in zip(range(total), stream)]
        print(f"model: {config.model.architecture}, {spec.num_tasks} tasks, {len(spec.tables)} tables, "
              f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
              f"device {env.device}, {env.world_size} process(es)", flush=True)
        plain, framework = [], []
        for r in range(args.repeat):
            plain.append(plain_loop(config, spec, env, batches, args.warmup, args.steps))
            print(f"  run {r + 1}: plain TorchRec loop   {plain[-1]:>10,.0f} samples/s", flush=True)
            framework.append(framework_loop(config, spec, env, args.warmup, args.steps))
            print(f"  run {r + 1}: framework (Trainer)  {framework[-1]:>10,.0f} samples/s", flush=True)
        p, f = statistics.median(plain), statistics.median(framework)
        bp, bf = max(plain), max(framework)
        print(f"plain TorchRec loop: median {p:,.0f}, best {bp:,.0f} samples/s over {args.repeat} runs")
        print(f"framework step:      median {f:,.0f}, best {bf:,.0f} samples/s over {args.repeat} runs")
        # best-of is the least disturbed by other processes on a shared machine
        print(f"ratio framework/plain: {bf / bp:.3f} best-of, {f / p:.3f} median (target >= 0.90)")
    return 0
