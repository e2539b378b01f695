"""`recsys-mtl data synth|kuairand|summary`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="generate, convert and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    p = dsub.add_parser("synth", help="write synthetic date-partitioned Parquet with correlated tasks")
    p.add_argument("--out", required=True, type=Path, help="output folder (written atomically)")
    p.add_argument("--tasks", type=int, default=32, help="number of binary tasks, 1-128 (default 32)")
    p.add_argument("--rows", type=int, default=1_000_000, help="total rows (default 1,000,000)")
    p.add_argument("--days", type=int, default=7, help="date partitions (default 7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-date", default="2026-01-01")
    p.add_argument("--table-scale", type=float, default=1.0, help="shrink every embedding table by this factor")
    p.add_argument("--drift", type=float, default=0.0, help="per-day drift of task relationships (default 0)")
    p.add_argument("--regression-tasks", type=int, default=0,
                   help="watch-time-like regression targets (log-normal seconds) after the binary tasks, 0-16 "
                        "(default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_synth)

    p = dsub.add_parser("kuairand", help="convert the KuaiRand subset to Parquet with a time split")
    p.add_argument("--src", type=Path, default=Path("../shared/data/kuairand"))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--split-date", default="20220418",
                   help="last train day, YYYYMMDD or YYYY-MM-DD (default 20220418, the data README's split)")
    p.add_argument("--end-date", default=None,
                   help="last test day; later days are dropped (e.g. --split-date 20220415 --end-date 20220418 "
                        "holds out a validation split from the train days only)")
    p.set_defaults(func=_kuairand)

    p = dsub.add_parser("summary", help="stream a dataset once and print per-task label statistics")
    p.add_argument("path", type=Path, help="Parquet file or folder")
    p.add_argument("--spec", type=Path, help="feature spec (default: PATH/feature_spec.yaml or its parent's)")
    p.add_argument("--batch-size", type=int, default=8192)
    p.set_defaults(func=_summary)


def find_spec(path: Path, spec: Path | None) -> Path:
    if spec is not None:
        return spec
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "feature_spec.yaml").exists():
            return folder / "feature_spec.yaml"
    raise FileNotFoundError(f"{path}: no feature_spec.yaml beside the data; pass --spec")


def _synth(args: argparse.Namespace) -> int:
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    cfg = SynthConfig(tasks=args.tasks, rows=args.rows, days=args.days, seed=args.seed,
                      start_date=args.start_date, table_scale=args.table_scale, drift=args.drift,
                      regression_tasks=args.regression_tasks)
    out = generate_synthetic(args.out, cfg, overwrite=args.overwrite)
    tasks = f"{cfg.tasks} tasks" + (f" + {cfg.regression_tasks} regression tasks" if cfg.regression_tasks else "")
    print(f"wrote {cfg.rows:,} rows, {tasks}, {cfg.days} days to {out} (spec: {out / 'feature_spec.yaml'})")
    return 0


def _kuairand(args: argparse.Namespace) -> int:
    from recsys_mtl.data.kuairand import convert_kuairand, parse_date

    end = parse_date(args.end_date) if args.end_date is not None else None
    out = convert_kuairand(args.src, args.out, overwrite=args.overwrite, split_date=parse_date(args.split_date),
                           end_date=end)
    print(f"wrote {out / 'train'} and {out / 'test'} (spec: {out / 'feature_spec.yaml'})")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.data.summary import summarize

    spec = FeatureSpec.load(find_spec(args.path, args.spec))
    print(summarize(args.path, spec, args.batch_size).format())
    return 0
