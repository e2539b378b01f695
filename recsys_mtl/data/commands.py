"""`recsys-mtl data synth|kuairand|summary|infer-spec`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from recsys_mtl.argtypes import at_least_one

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

    p = dsub.add_parser("infer-spec", help="propose a commented feature spec from Parquet (schema + one pass)")
    p.add_argument("data", type=Path, help="Parquet file or folder")
    p.add_argument("--out", type=Path, required=True, help="where to write the spec (YAML)")
    p.add_argument("--embedding-dim", type=at_least_one("dimensions"), default=16, help="every table's dimension (default 16)")
    p.add_argument("--max-table-rows", type=at_least_one("rows"), default=5_000_000,
                   help="integer ids whose largest value needs a bigger table are hashed (default 5,000,000)")
    p.add_argument("--regression-task", action="append", default=[], metavar="COL",
                   help="a numeric label column to train as a regression task (repeat for several)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_infer_spec)

    p = dsub.add_parser("summary", help="stream a dataset once and print per-task label statistics")
    p.add_argument("path", type=Path, help="Parquet file or folder")
    p.add_argument("--spec", type=Path, help="feature spec (default: PATH/_feature_spec.yaml or its parent's)")
    p.add_argument("--batch-size", type=int, default=8192)
    p.set_defaults(func=_summary)


def find_spec(path: Path, spec: Path | None) -> Path:
    if spec is not None:
        return spec
    from recsys_mtl.data.folder import SPEC_FILE, spec_file

    for folder in (path, path.parent, path.parent.parent):
        if spec_file(folder).exists():
            return spec_file(folder)
    raise FileNotFoundError(f"{path}: no {SPEC_FILE} beside the data; pass --spec")


def _synth(args: argparse.Namespace) -> int:
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    cfg = SynthConfig(tasks=args.tasks, rows=args.rows, days=args.days, seed=args.seed,
                      start_date=args.start_date, table_scale=args.table_scale, drift=args.drift,
                      regression_tasks=args.regression_tasks)
    from recsys_mtl.data.folder import SPEC_FILE

    out = generate_synthetic(args.out, cfg, overwrite=args.overwrite)
    tasks = f"{cfg.tasks} tasks" + (f" + {cfg.regression_tasks} regression tasks" if cfg.regression_tasks else "")
    print(f"wrote {cfg.rows:,} rows, {tasks}, {cfg.days} days to {out} (spec: {out / SPEC_FILE})")
    return 0


def _kuairand(args: argparse.Namespace) -> int:
    from recsys_mtl.data.folder import SPEC_FILE
    from recsys_mtl.data.kuairand import convert_kuairand, parse_date

    end = parse_date(args.end_date) if args.end_date is not None else None
    out = convert_kuairand(args.src, args.out, overwrite=args.overwrite, split_date=parse_date(args.split_date),
                           end_date=end)
    print(f"wrote {out / 'train'} and {out / 'test'} (spec: {out / SPEC_FILE})")
    return 0


def _infer_spec(args: argparse.Namespace) -> int:
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.data.errors import DataError
    from recsys_mtl.data.infer_spec import infer_spec, render

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out}: already exists (pass --overwrite to replace it)")
    spec, choices = infer_spec(args.data, embedding_dim=args.embedding_dim, max_table_rows=args.max_table_rows,
                               regression_tasks=args.regression_task)
    if not spec["tasks"]:
        raise DataError(f"{args.data}: no 0/1 column to train on and no --regression-task; a spec needs at least "
                        "one task")
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(render(spec, choices, str(args.data)))
    os.replace(tmp, args.out)  # whole or not at all
    loaded = FeatureSpec.load(args.out)  # what the trainer will read
    print(f"wrote {args.out}: {len(loaded.sparse)} id features, {len(loaded.dense)} dense, {loaded.num_tasks} tasks "
          f"({sum(c.kind == 'skip' for c in choices)} columns left out); train with\n"
          f"  recsys-mtl train configs/template.yaml --set data.train_path={args.data} --set data.spec={args.out}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.data.summary import summarize

    spec = FeatureSpec.load(find_spec(args.path, args.spec))
    print(summarize(args.path, spec, args.batch_size).format())
    return 0
