"""`recsys-mtl train CONFIG [--set key=value ...] [--nproc N] [--nnodes M --rdzv-endpoint HOST:PORT]`.

One process by default. `--nproc N` re-launches the same command under
torchrun (`--standalone`, N processes on this machine: gloo on CPU, nccl on
GPUs); `torchrun --nproc_per_node N -m recsys_mtl.cli train CONFIG` works too.
Across machines, run the same command on each of M machines with `--nnodes M
--rdzv-endpoint HOST:PORT` (torchrun's c10d rendezvous, hosted by the machine
named HOST; N processes on each): `torchrun --nnodes M --nproc_per_node N
--rdzv_backend c10d --rdzv_endpoint HOST:PORT --rdzv_id ID -m recsys_mtl.cli
train CONFIG` by hand. The output_dir (checkpoints) must be one shared folder.
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
    p.add_argument("--nnodes", type=at_least_one("machines"), default=1,
                   help="machines in the run (default 1); with M > 1 run this same command on each machine, "
                        "with --rdzv-endpoint; --nproc is then per machine")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="torchrun's c10d rendezvous, hosted by the machine HOST (port default 29400); "
                        "the same on every machine; needed with --nnodes > 1")
    p.add_argument("--rdzv-id", default="recsys-mtl", metavar="ID",
                   help="the run's id at the rendezvous, the same on every machine (default recsys-mtl); "
                        "runs sharing an endpoint need different ids")
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


def torchrun_args(config: str, overrides: list[str], nproc: int, nnodes: int = 1,
                  rdzv_endpoint: str | None = None, rdzv_id: str = "recsys-mtl") -> list[str]:
    """torchrun's command line: `--standalone` on one machine, a c10d rendezvous across several."""
    if nnodes > 1:
        launch = [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}",
                  f"--rdzv_id={rdzv_id}"]
    else:
        launch = ["--standalone"]
    return launch + [f"--nproc_per_node={nproc}", "-m", "recsys_mtl.cli", "train", config] + [
        f"--set={o}" for o in overrides]


def launch_torchrun(config: str, overrides: list[str], nproc: int, nnodes: int = 1,
                    rdzv_endpoint: str | None = None, rdzv_id: str = "recsys-mtl") -> int:
    """`train CONFIG --set ...` under torchrun in this process; returns the exit code."""
    return _run_torchrun(torchrun_args(config, overrides, nproc, nnodes, rdzv_endpoint, rdzv_id), nproc, "training")


def launch_command(argv: list[str], nproc: int, what: str) -> int:
    """`recsys-mtl ARGV` as N torchrun workers on this machine (evaluate, predict); returns the exit code."""
    # "--" ends torchrun's options: its parser would take --run, --nproc (prefixes of its own) as ambiguous
    return _run_torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "recsys_mtl.cli", "--"] + list(argv),
                         nproc, what)


def _run_torchrun(torchrun_argv: list[str], nproc: int, what: str) -> int:
    """torchrun in this process (its agent stops the workers on SIGTERM/SIGINT); returns the exit code.

    A worker's own error (a config error: exit 2) has already been printed by the worker; torchrun's
    traceback about the failed child is not repeated on top of it.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    args = parse_args(torchrun_argv)
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
    from recsys_mtl.config.loader import ConfigError
    from recsys_mtl.config.train import TrainConfig

    if args.register_model:
        args.overrides = args.overrides + [f"tracking.register_model={args.register_model}"]
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise ConfigError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the machine that hosts the rendezvous, "
                          "the same on every machine)")
    config = TrainConfig.load(args.config, args.overrides)  # fail fast, once, before launching anything
    config.check_paths()
    if ((args.nproc or 1) > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args.config, args.overrides, args.nproc or 1, args.nnodes, args.rdzv_endpoint,
                               args.rdzv_id)

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
