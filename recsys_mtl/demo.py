"""`recsys-mtl demo`: the README's main job on embedded defaults.

Now: generate synthetic data, stream it, print a summary. (Training, tracking and
evaluation join as they land.)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on embedded defaults")
    p.add_argument("--out", type=Path, default=Path("demo"), help="working folder (default ./demo)")
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--tasks", type=int, default=32)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.data.summary import summarize
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    data = args.out / "data"
    if not (data / "feature_spec.yaml").exists():
        print(f"[1/2] generating {args.rows:,} synthetic rows, {args.tasks} tasks -> {data}", flush=True)
        generate_synthetic(data, SynthConfig(rows=args.rows, tasks=args.tasks, days=4), overwrite=True)
    else:
        print(f"[1/2] reusing synthetic data in {data}", flush=True)
    spec = FeatureSpec.load(data / "feature_spec.yaml")
    print("[2/2] streaming it through the reader", flush=True)
    print(summarize(data, spec).format())
    return 0
