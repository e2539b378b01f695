"""`recsys-mtl demo`: the README's main job, end to end in the embedded MLflow store.

1. synthetic data (32 binary tasks and 4 watch-time-like regression tasks, 4 days: 3 to train on, the last one
   to evaluate on): the mix of loss kinds and scales where task weighting matters;
2. training with GO4Align, then with equal weights (configs/demo.yaml), each a tracked run;
3. offline evaluation of both on the held-out day, GO4Align against the equal-weights baseline
   (per-task deltas with bootstrap CIs, NE-change plot), each an eval run nested under its model's run;
4. the comparison table of the two eval runs (NE change of GO4Align vs equal);
5. the command that opens the MLflow UI on the store (`<out>/mlflow.db`, artifacts in `<out>/mlartifacts`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
import sys
from pathlib import Path

from recsys_mtl.metrics.names import AUC

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on embedded defaults")
    p.add_argument("--out", type=Path, default=Path("demo"), help="working folder (default ./demo)")
    p.add_argument("--rows", type=int, default=400_000, help="synthetic rows over 4 days (default %(default)s)")
    p.add_argument("--tasks", type=int, default=32, help="binary tasks (default %(default)s)")
    p.add_argument("--regression-tasks", type=int, default=4,
                   help="regression tasks (log-normal watch times, log1p; default %(default)s, 0 for binary only)")
    p.add_argument("--table-scale", type=float, default=0.01, help="shrink the synthetic tables (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="default: configs/demo.yaml")
    p.add_argument("--batch-size", type=int, default=None, help="default: configs/demo.yaml")
    p.add_argument("--groups", type=int, default=None, help="GO4Align's K (default: configs/demo.yaml)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates of the evaluation")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, help="training config (default: configs/demo.yaml)")
    p.set_defaults(func=run)


def split_last_day(data: Path) -> tuple[Path, Path]:
    """Move the `date=...` partitions of `data` into `data/train` (all but the last day) and `data/eval`."""
    train, evald = data / "train", data / "eval"
    days = sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith("date="))
    if days:
        if len(days) < 2:
            raise ValueError(f"{data}: needs at least 2 days to hold one out, found {len(days)}")
        train.mkdir(exist_ok=True)
        evald.mkdir(exist_ok=True)
        for d in days[:-1]:
            d.rename(train / d.name)
        days[-1].rename(evald / days[-1].name)
    return train, evald


def _data(args: argparse.Namespace) -> Path:
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    data = args.out / "data"
    stamp = data / "_demo_data.txt"  # a name Parquet readers skip
    want = (f"rows={args.rows} tasks={args.tasks} regression_tasks={args.regression_tasks} "
            f"table_scale={args.table_scale} days=4\n")
    if stamp.exists() and stamp.read_text() == want:
        print(f"[1/5] reusing synthetic data in {data}", flush=True)
        return data
    print(f"[1/5] generating {args.rows:,} synthetic rows, {args.tasks} binary + {args.regression_tasks} regression "
          f"tasks, 4 days -> {data} (last day held out for evaluation)", flush=True)
    generate_synthetic(data, SynthConfig(rows=args.rows, tasks=args.tasks, regression_tasks=args.regression_tasks,
                                         days=4, table_scale=args.table_scale), overwrite=True)
    split_last_day(data)
    stamp.write_text(want)
    return data


def _train(args, data: Path, store: str, artifacts: Path, method: str, weighting_args: dict) -> str:
    from recsys_mtl.config.train import TrainConfig
    from recsys_mtl.data.folder import spec_file
    from recsys_mtl.tracking.callback import TrackingCallback
    from recsys_mtl.train.trainer import Trainer

    out = args.out / "runs" / method
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"data.train_path={data / 'train'}", f"data.eval_path={data / 'eval'}",
                 f"data.spec={spec_file(data)}", f"train.output_dir={out}",
                 f"weighting.method={method}", f"weighting.args={weighting_args}",
                 f"tracking.tracking_uri={store}", f"tracking.artifact_location={artifacts.as_uri()}",
                 f"tracking.run_name={method}"]
    if args.epochs is not None:  # 0 reaches the config check
        overrides.append(f"train.epochs={args.epochs}")
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    config = TrainConfig.load(str(args.config), overrides)
    callback = TrackingCallback()
    t0 = time.perf_counter()
    try:
        result = Trainer(config, callbacks=[callback]).fit()
    except BaseException:
        callback.close("FAILED")
        raise
    aucs = [m[AUC] for m in (result.eval_metrics or {}).values() if m.get(AUC, math.nan) == m.get(AUC)]
    print(f"      {method}: {result.steps} steps in {time.perf_counter() - t0:.0f}s "
          f"({result.samples_per_second:,.0f} samples/s), held-out mean AUC {sum(aucs) / max(len(aucs), 1):.4f}, "
          f"MLflow run {callback.run_id}", flush=True)
    return callback.run_id


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from recsys_mtl.cli import build_parser
    from recsys_mtl.config.loader import read_yaml
    from recsys_mtl.evaluate.commands import evaluate
    from recsys_mtl.tracking.commands import run_compare
    from recsys_mtl.train.commands import quiet_library_logs

    quiet_library_logs()
    start = time.perf_counter()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    data = _data(args)
    store = f"sqlite:///{args.out / 'mlflow.db'}"
    artifacts = args.out / "mlartifacts"

    weighting = read_yaml(args.config).get("weighting") or {}  # its args only when the config is GO4Align's
    go4align_args = dict((weighting.get("method") == "go4align" and weighting.get("args")) or {"num_groups": 4})
    if args.groups is not None:
        go4align_args["num_groups"] = args.groups
    print(f"[2/5] training with GO4Align {go4align_args}", flush=True)
    go4align = _train(args, data, store, artifacts, "go4align", go4align_args)
    print("[3/5] training with equal weights", flush=True)
    equal = _train(args, data, store, artifacts, "equal", {})

    print(f"[4/5] offline evaluation on the held-out day {data / 'eval'}", flush=True)
    parser = build_parser()
    common = ["--data", str(data / "eval"), "--tracking-uri", store, "--n-boot", str(args.n_boot)]
    eval_equal = evaluate(parser.parse_args(["evaluate", "--run", equal, *common, "--out", str(args.out / "eval" / "equal")]))
    eval_go4align = evaluate(parser.parse_args(["evaluate", "--run", go4align, "--baseline", equal, *common,
                                                "--out", str(args.out / "eval" / "go4align_vs_equal")]))

    print("[5/5] comparison of the eval runs (reference: equal weights)", flush=True)
    run_compare(parser.parse_args(["compare", eval_equal.eval_run, eval_go4align.eval_run, "--tracking-uri", store,
                                   "--plot", str(args.out / "compare_ne.png")]))
    print(f"\ndemo done in {time.perf_counter() - start:.0f}s. Runs, metrics, plots and models are in {store}.")
    print("Open the MLflow UI on it:\n")
    mlflow_cli = Path(sys.executable).parent / "mlflow"  # the environment's own CLI, venv activated or not
    print(f"  {mlflow_cli if mlflow_cli.exists() else 'mlflow'} ui --backend-store-uri {store} --host 127.0.0.1 --port 5000\n")
    return 0
