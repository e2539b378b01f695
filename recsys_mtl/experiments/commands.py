"""`recsys-mtl experiment <name>`: each experiment module defines `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse

EXPERIMENTS = {
    "weighting": ("recsys_mtl.experiments.weighting",
                  "every weighting method x seed on one dataset: per-task test NE/AUC, NE change vs equal"),
}


def register(sub: argparse._SubParsersAction) -> None:
    from recsys_mtl.cli import add_module_group

    add_module_group(sub, "experiment", "grids of training runs, evaluated offline and tabulated", "EXPERIMENT",
                     EXPERIMENTS)
