"""`recsys-mtl experiment <name>`: each experiment module defines `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse
import importlib

EXPERIMENTS = {
    "weighting": ("recsys_mtl.experiments.weighting",
                  "every weighting method x seed on one dataset: per-task test NE/AUC, NE change vs equal"),
}


def register(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("experiment", help="grids of training runs, evaluated offline and tabulated")
    esub = exp.add_subparsers(dest="experiment_command", metavar="EXPERIMENT", required=True)
    for name, (module, help_text) in EXPERIMENTS.items():
        p = esub.add_parser(name, help=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
