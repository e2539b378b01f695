"""`recsys-mtl bench <name>`: each benchmark module defines `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse

BENCHMARKS = {
    "data": ("recsys_mtl.bench.data", "raw pyarrow scan vs the full reader producing batches"),
    "train": ("recsys_mtl.bench.train", "plain TorchRec loop vs the full framework step, same model"),
    "tracking": ("recsys_mtl.bench.tracking", "Trainer steps/s with tracking off, TorchRec metrics only, full MLflow"),
    "evaluate": ("recsys_mtl.bench.evaluate", "streaming vs exact evaluation (rows/s, peak RSS, AUC deviation); "
                 "scoring vs training throughput"),
    "weighting": ("recsys_mtl.bench.weighting", "weighting step per method and T vs an equal-weights training step"),
}


def register(sub: argparse._SubParsersAction) -> None:
    from recsys_mtl.cli import add_module_group

    add_module_group(sub, "bench", "benchmarks (ratios measured side by side in one run)", "BENCHMARK", BENCHMARKS)
