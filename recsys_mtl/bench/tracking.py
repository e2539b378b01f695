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

from recsys_mtl.bench import CONFIGS

MODES = ("off", "metrics", "full")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(CONFIGS / "demo.yaml"), help="training config (default: %(default)s)")
    p.add_argument("--data", type=Path, default=None, help="Parquet dataset with _feature_spec.yaml (default: generate)")
    p.add_argument("--spec", type=Path, default=None, help="feature spec (default: DATA/_feature_spec.yaml)")
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
        "train.checkpoint.at_end=false", "tracking.log_model=false",  # a DLRM-size run would write GBs per timed run
        f"tracking.enabled={'false' if mode == 'off' else 'true'}",
        f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"tracking.artifact_location={(store / 'artifacts').as_uri()}", "tracking.experiment=bench-tracking",
    ] + list(args.overrides)
    return TrainConfig.load(args.config, overrides)


def _thread_cpu_s(native_id: int | None) -> float:
    """CPU seconds of one thread of this process, from /proc (0 when unknown)."""
    import os

    if native_id is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class _Timed:
    """Wraps a bound method, adding the calling thread's CPU time spent in it to `total[0]`."""

    def __init__(self, fn, total: list[float]) -> None:
        self.fn, self.total = fn, total

    def __call__(self, *args, **kwargs):
        t0 = time.thread_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total[0] += time.thread_time() - t0


def timed_run(config, spec, env, mode: str, warmup: int, steps: int) -> dict[str, float]:
    """One training run, measured between the log flushes at `warmup` and at the end.

    steps_s: steps/s (wall); cpu_ms: process CPU ms per step (all threads); metrics_ms: training-thread
    CPU ms per step inside the streaming metrics (update + compute); callback_ms: training-thread CPU
    ms per step inside TrackingCallback hooks; worker_ms: the tracker thread's CPU ms per step.
    """
    from recsys_mtl.tracking.callback import TrackingCallback
    from recsys_mtl.train.trainer import Trainer, TrainerCallback

    metrics_cpu, callback_cpu = [0.0], [0.0]
    tracking = TrackingCallback() if mode == "full" else None
    marks: dict[int, tuple[float, ...]] = {}

    class Clock(TrainerCallback):
        def on_log(self, trainer, records):
            worker = getattr(getattr(tracking, "tracker", None), "_thread", None)
            marks[records[-1]["step"]] = (time.perf_counter(), time.process_time(), metrics_cpu[0],
                                          callback_cpu[0], _thread_cpu_s(getattr(worker, "native_id", None)))

    callbacks: list = [Clock()]
    if tracking is not None:
        for hook in ("on_log", "on_train_metrics", "on_eval"):
            setattr(tracking, hook, _Timed(getattr(tracking, hook), callback_cpu))
        callbacks.append(tracking)
    trainer = Trainer(config, spec=spec, env=env, callbacks=callbacks)
    if trainer.train_metrics is not None:
        for method in ("update", "compute"):
            setattr(trainer.train_metrics, method, _Timed(getattr(trainer.train_metrics, method), metrics_cpu))
    trainer.fit()
    first, last = min(marks), max(marks)
    if first != warmup or last != warmup + steps:
        raise RuntimeError(f"bench: expected log flushes at steps {warmup} and {warmup + steps}, got {sorted(marks)}")
    d = [b - a for a, b in zip(marks[first], marks[last])]
    return {"steps_s": steps / d[0], "cpu_ms": 1000 * d[1] / steps, "metrics_ms": 1000 * d[2] / steps,
            "callback_ms": 1000 * d[3] / steps, "worker_ms": 1000 * d[4] / steps}


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from recsys_mtl.bench.model_step import bench_data
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.data.folder import spec_file
    from recsys_mtl.train.commands import quiet_library_logs
    from recsys_mtl.train.distributed import init_distributed

    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("bench tracking: --warmup and --steps must be at least 1")
    if args.steps % args.warmup:
        raise SystemExit("bench tracking: --steps must be a multiple of --warmup (timing uses the log flushes)")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    quiet_library_logs()
    logging.getLogger("recsys_mtl.train").setLevel(logging.WARNING)
    logging.getLogger("recsys_mtl.tracking").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        tmp = Path(tmp)
        data = bench_data(args.data, tmp, rows=args.rows, tasks=args.tasks, table_scale=args.table_scale)
        spec_path = args.spec or spec_file(data)
        spec = FeatureSpec.load(spec_path)
        probe = _config(args, Path(data), spec_path, tmp / "probe", "full", tmp)
        env = init_distributed(probe.train.device)
        print(f"config {args.config}: {probe.model.architecture}, weighting {probe.weighting.method}, "
              f"{spec.num_tasks} tasks, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}; "
              f"metrics every {probe.tracking.train_metrics_every_n_steps} steps; device {env.device}", flush=True)
        results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for r in range(args.repeat):
            for mode in MODES:
                config = _config(args, Path(data), spec_path, tmp / f"run-{mode}-{r}", mode, tmp)
                res = timed_run(config, spec, env, mode, args.warmup, args.steps)
                results[mode].append(res)
                extra = "" if mode == "off" else f", in metrics {res['metrics_ms']:.2f} ms/step"
                if mode == "full":
                    extra += f", in callbacks {res['callback_ms']:.2f} ms/step, tracker thread {res['worker_ms']:.2f} ms/step"
                print(f"  run {r + 1}: {mode:<8} {res['steps_s']:7.2f} steps/s, {res['cpu_ms']:6.1f} ms CPU/step{extra}",
                      flush=True)

        def med(mode: str, key: str) -> float:
            return statistics.median(r[key] for r in results[mode])

        step_ms = 1000 / med("off", "steps_s")
        print(f"median over {args.repeat} runs (steps/s): " + ", ".join(f"{m} {med(m, 'steps_s'):.2f}" for m in MODES))
        for m, ref, what in (("metrics", "off", "TorchRec metrics"), ("full", "off", "metrics + MLflow"),
                             ("full", "metrics", "MLflow logging alone")):
            print(f"  {what:<21} ({m} vs {ref}): wall time per step "
                  f"{100 * (med(ref, 'steps_s') / med(m, 'steps_s') - 1):+.2f}% (A/B, noisy under load)")
        metrics_ms, cb_ms, worker_ms = med("full", "metrics_ms"), med("full", "callback_ms"), med("full", "worker_ms")
        print(f"attributed CPU per step against the tracking-off step ({step_ms:.1f} ms wall, {med('off', 'cpu_ms'):.1f} ms CPU):")
        print(f"  streaming metrics (training thread)  {metrics_ms:6.2f} ms = {100 * metrics_ms / step_ms:5.2f}%")
        print(f"  tracking callbacks (training thread) {cb_ms:6.2f} ms = {100 * cb_ms / step_ms:5.2f}%")
        print(f"  tracker thread (background)          {worker_ms:6.2f} ms = {100 * worker_ms / step_ms:5.2f}%")
        print(f"  MLflow logging, both threads         {cb_ms + worker_ms:6.2f} ms = {100 * (cb_ms + worker_ms) / step_ms:5.2f}%")
    return 0
