"""`recsys-mtl train CONFIG [--set key=value ...] [--nproc N]`.

One process by default. `--nproc N` re-launches the same command under
torchrun (`--standalone`, N processes on this machine: gloo on CPU, nccl on
GPUs); `torchrun --nproc_per_node N -m recsys_mtl.cli train CONFIG` works too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from recsys_mtl.argtypes import at_least_one


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a multi-task model from a config (configs/*.yaml)")
    p.add_argument("config", help="training config YAML (see recsys_mtl/config/train.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.seed=1 (repeatable; value parsed as YAML)")
    p.add_argument("--nproc", type=at_least_one("processes"), default=None,
                   help="run N processes on this machine through torchrun (default: 1, no torchrun)")
    p.add_argument("--register-model", metavar="NAME",
                   help="register the trained model in the MLflow model registry as NAME (= --set tracking.register_model=NAME)")
    p.set_defaults(func=run)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


_FALSE_ALARMS = {"": _DropMessage("Sharding spec not found for "),
                 "torchrec.distributed.utils": _DropMessage("caching params will be ignored")}


def quiet_library_logs() -> None:
    """TorchRec and FBGEMM log every pipeline fill, planner and kernel detail; keep our lines readable."""
    logging.getLogger().setLevel(logging.WARNING)  # FBGEMM logs its kernel arguments on the root logger
    logging.getLogger("recsys_mtl").setLevel(logging.INFO)
    logging.getLogger("torchrec").setLevel(logging.WARNING)
    logging.getLogger("torchrec.distributed.comm").setLevel(logging.ERROR)
    logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)
    logging.getLogger("torch.distributed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"torchrec\..*")
    warnings.filterwarnings("ignore", message=r".*is_fx_tracing.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed\..*")
    # TorchRec's collectives call c10d functions PyTorch has deprecated: a FutureWarning per call under --nproc
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed\..*")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    # A data_parallel table (sharding.tables: data_parallel) makes three false alarms per table and run:
    # TorchRec's "Sharding spec not found" (root logger) and "caching params will be ignored", and
    # PyTorch's "an autograd kernel was not registered" for FBGEMM's dense lookup, whose gradients are
    # right (tests/train/test_trainer.py: the same losses and weights as table_wise under the same SGD).
    for name, log_filter in _FALSE_ALARMS.items():
        logging.getLogger(name).addFilter(log_filter)  # the same object: calling this again adds nothing
    warnings.filterwarnings("ignore", message=r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel")


def launch_torchrun(config: str, overrides: list[str], nproc: int) -> int:
    """`train CONFIG --set ...` under torchrun in this process; returns the exit code."""
    return launch_command(["train", config] + [f"--set={o}" for o in overrides], nproc, "training")


def launch_command(argv: list[str], nproc: int, what: str) -> int:
    """`recsys-mtl ARGV` as N torchrun workers (its agent stops them on SIGTERM/SIGINT); returns the exit code.

    A worker's own error (a config error: exit 2) has already been printed by the worker; torchrun's
    traceback about the failed child is not repeated on top of it.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    # "--" ends torchrun's options: its parser would take --run, --nproc (prefixes of its own) as ambiguous
    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "recsys_mtl.cli", "--"] + list(argv))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun gives each worker 1 thread (and warns) unless told; share the machine's cores instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        torchrun(args)
    except ChildFailedError as exc:
        codes = {rank: f.exitcode for rank, f in sorted(exc.failures.items())}
        print(f"recsys-mtl: {what} failed (exit codes by rank: {codes}); the workers' errors are above",
              file=sys.stderr)
        return 2 if 2 in codes.values() else 1
    except SignalException as exc:
        print(f"recsys-mtl: stopped by {exc.sigval.name}; the workers were stopped", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.config.train import TrainConfig

    if args.register_model:
        args.overrides = args.overrides + [f"tracking.register_model={args.register_model}"]
    config = TrainConfig.load(args.config, args.overrides)  # fail fast, once, before launching anything
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args.config, args.overrides, args.nproc)

    quiet_library_logs()
    from recsys_mtl.train.distributed import die_with_launcher, init_distributed, shutdown_distributed
    from recsys_mtl.train.trainer import Trainer

    die_with_launcher()
    env = init_distributed(config.train.device)
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    callbacks = []
    if config.tracking.enabled:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from recsys_mtl.tracking.callback import TrackingCallback

        callbacks.append(TrackingCallback())
    try:
        Trainer(config, env=env, callbacks=callbacks).fit()  # a failed or stopped fit closes the run (FAILED/KILLED)
    finally:
        shutdown_distributed()
    for cb in callbacks:
        if cb.run_id:
            print(f"MLflow run {cb.run_id} at {cb.tracker.tracking_uri}")
        if cb.model_version is not None:
            print(f"registered model {cb.model_version.name} version {cb.model_version.version}")
    return 0
