"""`recsys-mtl bench tracking`: the real Trainer with tracking off, TorchRec metrics only, and full tracking.

- off:     `tracking.enabled: false` (no streaming metrics, no MLflow);
- metrics: the streaming TorchRec metrics updated every step and computed every
           `tracking.train_metrics_every_n_steps`, but no MLflow run;
- full:    metrics + TrackingCallback into a fresh sqlite store (params, tags, per-task
           losses/weights/groups, streaming metrics, system metrics, plots, model artifact).

Same config, data and steps for all three; runs alternate (off, metrics, full, off, ...) so
background load hits all alike. Steps/s is timed between the log flushes at `--warmup` and
the last step, so the run's start (MLflow run creation) and end (checkpoint, model upload,
plots) are not in it; the tracker's background-thread CPU time is printed separately.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

MODES = ("off", "metrics", "full")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.yaml", help="training config (default: %(default)s)")
    p.add_argument("--data", type=Path, default=None, help="Parquet dataset with feature_spec.yaml (default: generate)")
    p.add_argument("--spec", type=Path, default=None, help="feature spec (default: DATA/feature_spec.yaml)")
    p.add_argument("--rows", type=int, default=200_000, help="rows to generate when --data is not given")
    p.add_argument("--tasks", type=int, default=32, help="tasks to generate when --data is not given")
    p.add_argument("--table-scale", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=200, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternating")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _config(args, data: Path, spec: Path, out: Path, mode: str, store: Path):
    from recsys_mtl.config.train import TrainConfig

    overrides = [
        f"data.train_path={data}", f"data.spec={spec}", "data.eval_path=null",
        f"data.batch_size={args.batch_size}", f"train.max_steps={args.warmup + args.steps}", "train.epochs=1000",
        f"train.log_every={args.warmup}", "train.eval_every=0", "train.progress_bar=false",
        f"train.output_dir={out}", "train.checkpoint.every=0", "train.checkpoint.resume=false",
        f"tracking.enabled={'false' if mode == 'off' else 'true'}",
        f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"tracking.artifact_location={(store / 'artifacts').as_uri()}", "tracking.experiment=bench-tracking",
    ] + list(args.overrides)
    return TrainConfig.load(args.config, overrides)


def timed_run(config, spec, env, mode: str, warmup: int, steps: int) -> tuple[float, float, float]:
    """Between the flushes at `warmup` and the end: (steps/s, process CPU ms per step, all threads),
    and the tracker thread's CPU seconds over the whole run."""
    from recsys_mtl.tracking.callback import TrackingCallback
    from recsys_mtl.train.trainer import Trainer, TrainerCallback

    marks: dict[int, tuple[float, float]] = {}

    class Clock(TrainerCallback):
        def on_log(self, trainer, records):
            marks[records[-1]["step"]] = (time.perf_counter(), time.process_time())

    callbacks: list = [Clock()]
    tracking = TrackingCallback() if mode == "full" else None
    if tracking is not None:
        callbacks.append(tracking)
    Trainer(config, spec=spec, env=env, callbacks=callbacks).fit()
    first, last = min(marks), max(marks)
    if first != warmup or last != warmup + steps:
        raise RuntimeError(f"bench: expected log flushes at steps {warmup} and {warmup + steps}, got {sorted(marks)}")
    worker_cpu = tracking.tracker.stats()["worker_cpu_s"] if tracking is not None and tracking.run_id else 0.0
    (w0, c0), (w1, c1) = marks[first], marks[last]
    return steps / (w1 - w0), 1000 * (c1 - c0) / steps, worker_cpu


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.train.commands import quiet_library_logs
    from recsys_mtl.train.distributed import init_distributed

    if args.steps % args.warmup:
        raise SystemExit("bench tracking: --steps must be a multiple of --warmup (timing uses the log flushes)")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    quiet_library_logs()
    logging.getLogger("recsys_mtl.train").setLevel(logging.WARNING)
    logging.getLogger("recsys_mtl.tracking").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

            print(f"generating {args.rows:,} synthetic rows, {args.tasks} tasks (table scale {args.table_scale})",
                  flush=True)
            data = generate_synthetic(tmp / "data", SynthConfig(tasks=args.tasks, rows=args.rows, days=2, seed=0,
                                                                table_scale=args.table_scale))
        spec_path = args.spec or Path(data) / "feature_spec.yaml"
        spec = FeatureSpec.load(spec_path)
        probe = _config(args, Path(data), spec_path, tmp / "probe", "full", tmp)
        env = init_distributed(probe.train.device)
        print(f"config {args.config}: {probe.model.architecture}, weighting {probe.weighting.method}, "
              f"{spec.num_tasks} tasks, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}; "
              f"metrics every {probe.tracking.train_metrics_every_n_steps} steps; device {env.device}", flush=True)
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.repeat):
            for mode in MODES:
                config = _config(args, Path(data), spec_path, tmp / f"run-{mode}-{r}", mode, tmp)
                t0 = time.perf_counter()
                rate, cpu_ms, worker_cpu = timed_run(config, spec, env, mode, args.warmup, args.steps)
                rates[mode].append(rate)
                cpu[mode].append(cpu_ms)
                extra = f", tracker thread CPU {worker_cpu:.2f}s of the {time.perf_counter() - t0:.0f}s run" \
                    if mode == "full" else ""
                print(f"  run {r + 1}: {mode:<8} {rate:8.2f} steps/s, {cpu_ms:7.1f} ms CPU/step{extra}", flush=True)
        med = {m: statistics.median(v) for m, v in rates.items()}
        mcpu = {m: statistics.median(v) for m, v in cpu.items()}
        print(f"median over {args.repeat} runs: " + ", ".join(f"{m} {med[m]:.2f} steps/s ({mcpu[m]:.1f} ms CPU/step)"
                                                             for m in MODES))
        for m, ref, what in (("metrics", "off", "TorchRec metrics"), ("full", "off", "metrics + MLflow"),
                             ("full", "metrics", "MLflow logging alone")):
            print(f"  {what:<21} ({m} vs {ref}): wall time per step {100 * (med[ref] / med[m] - 1):+.2f}%, "
                  f"CPU time per step {100 * (mcpu[m] / mcpu[ref] - 1):+.2f}%")
    return 0
