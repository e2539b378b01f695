"""`recsys-mtl bench <name>`: each benchmark module defines `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "data": ("recsys_mtl.bench.data", "raw pyarrow scan vs the full reader producing batches"),
    "train": ("recsys_mtl.bench.train", "plain TorchRec loop vs the full framework step, same model"),
    "tracking": ("recsys_mtl.bench.tracking", "Trainer steps/s with tracking off, TorchRec metrics only, full MLflow"),
    "weighting": ("recsys_mtl.bench.weighting", "weighting step per method and T vs an equal-weights training step"),
}


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = bsub.add_parser(name, help=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
