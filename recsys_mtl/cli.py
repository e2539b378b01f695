"""`recsys-mtl` command line. Each stage registers its own subcommands; imports stay lazy."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from recsys_mtl.config.loader import ConfigError
from recsys_mtl.data.errors import DataError

# Errors about the user's input: printed as one line, exit code 2, no traceback.
USER_ERRORS = (ConfigError, DataError, FileExistsError, FileNotFoundError)

# Modules that define `register(subparsers)`; each adds its subcommands with set_defaults(func=...).
COMMAND_MODULES = [
    "recsys_mtl.data.commands",
    "recsys_mtl.bench.commands",
    "recsys_mtl.train.commands",
    "recsys_mtl.demo",
    "recsys_mtl.tracking.commands",
    "recsys_mtl.pipeline.commands",
    "recsys_mtl.evaluate.commands",
    "recsys_mtl.evaluate.predict",
    "recsys_mtl.experiments.commands",
]


def add_module_group(sub: argparse._SubParsersAction, name: str, help_text: str, metavar: str,
                     modules: dict[str, tuple[str, str]]) -> None:
    """`recsys-mtl NAME <entry>` where each entry's module defines `add_arguments(parser)` and `run(args)`.

    modules: entry -> (module path, one-line help).
    """
    group = sub.add_parser(name, help=help_text)
    gsub = group.add_subparsers(dest=f"{name}_command", metavar=metavar, required=True)
    for entry, (module, entry_help) in modules.items():
        p = gsub.add_parser(entry, help=entry_help)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-mtl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_argv = list(sys.argv[1:] if argv is None else argv)  # what a command relaunches under torchrun
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,  # a library may have configured the root logger while commands were imported
    )
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        return _error_line(exc, 2)
    except Exception as exc:  # errors that carry their own exit code are one line too (e.g. TrainingDiverged)
        code = getattr(exc, "exit_code", None)
        if not isinstance(code, int):
            raise
        return _error_line(exc, code)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: what was written is complete (checkpoints, outputs atomic)
        from recsys_mtl.train.interrupt import stop_signal

        signum = stop_signal(exc)
        sys.stderr.write("\nrecsys-mtl: " + ("interrupted" if signum == signal.SIGINT else "terminated") + "\n")
        sys.stderr.flush()
        return 128 + signum


def _error_line(exc: BaseException, code: int) -> int:
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    where = f" [rank {rank}]" if rank != "0" else ""
    sys.stderr.write(f"recsys-mtl: error{where}: {exc}\n")  # one write: ranks' lines do not interleave
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
