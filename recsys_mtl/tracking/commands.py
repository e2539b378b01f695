"""`recsys-mtl compare` and `recsys-mtl tracking flush-spool`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from recsys_mtl.argtypes import at_least_one


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="per-task NE/AUC/calibration of MLflow runs, NE change vs the first",
        description="Compare runs task by task from their eval/<metric>/<task> metrics. Give run ids "
                    "(the first is the reference), or --experiment with an optional --filter, e.g. "
                    "--filter \"metrics.`eval/ne/ctr` < 0.8\" (backticks around names with '/').")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--experiment", help="experiment name (instead of run ids)")
    p.add_argument("--filter", default="", help="MLflow search filter, with --experiment")
    p.add_argument("--max-runs", type=at_least_one("runs"), default=20, help="the newest N evaluated runs (default 20)")
    p.add_argument("--tracking-uri", help="default: sqlite:///mlflow.db in the current directory")
    p.add_argument("--plot", default="compare_ne.png", help="where to write the NE-change plot (default: %(default)s)")
    p.set_defaults(func=run_compare)

    t = subparsers.add_parser("tracking", help="tracking maintenance")
    tsub = t.add_subparsers(dest="tracking_command", metavar="ACTION", required=True)
    f = tsub.add_parser("flush-spool", help="upload metrics spooled while the tracking store was unreachable")
    f.add_argument("spool_dir", help="a run's work_dir/mlflow_spool folder")
    f.add_argument("--tracking-uri", help="send there instead of each record's own tracking URI")
    f.set_defaults(func=run_flush_spool)


def run_compare(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    from recsys_mtl.tracking.compare import compare_runs, find_runs, plot_comparison
    from recsys_mtl.config.tracking import default_tracking_uri

    if args.run_ids and args.experiment:
        raise ValueError("give either run ids or --experiment, not both")
    if args.tracking_uri is None and not Path("mlflow.db").exists():
        raise FileNotFoundError(f"no mlflow.db in {Path.cwd()}; pass --tracking-uri")
    client = MlflowClient(tracking_uri=args.tracking_uri or default_tracking_uri())
    from mlflow.exceptions import MlflowException

    try:
        comparison = compare_runs(find_runs(client, args.run_ids, args.experiment, args.filter, args.max_runs))
    except ValueError as exc:  # no such run / experiment / metrics: a user error, not a crash
        print(f"recsys-mtl compare: error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:  # a filter MLflow cannot parse
        print(f"recsys-mtl compare: error: --filter {args.filter!r}: {exc.message.splitlines()[0]}; names with '/' "
              "go in backticks: metrics.`eval/ne/click` < 0.8", file=sys.stderr)
        return 2
    print(comparison.to_table())
    path = plot_comparison(comparison, args.plot)
    print(f"plot: {path}")
    return 0


def run_flush_spool(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from recsys_mtl.tracking.spool import flush_spool_dir

    if not Path(args.spool_dir).is_dir():
        raise FileNotFoundError(f"{args.spool_dir}: not a directory")
    results = flush_spool_dir(args.spool_dir, args.tracking_uri)
    for path, ok in results.items():
        print(f"{'uploaded' if ok else 'NOT fully uploaded (store unreachable?)'}: {path}")
    if not results:
        print(f"nothing to upload in {args.spool_dir}")
    return 0 if all(results.values()) else 1
