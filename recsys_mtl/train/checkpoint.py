"""Atomic, sharded checkpoints with torch.distributed.checkpoint (DCP).

Layout under the checkpoint directory:

    step-00000120/        complete checkpoints (DCP files + .metadata + model.json, and the files the
                          trainer adds: config.yaml and feature_spec.yaml, as resolved by the process
                          that saved that step; a resume under other settings saves its own)
    latest                name of the newest complete one (written by atomic rename)
    .tmp-step-00000140/   a save in progress; never read, removed on the next save

A save writes everything into a temp directory, then rank 0 renames it into
place and rewrites `latest` by rename: a crash at any moment leaves the
previous checkpoint and pointer untouched. `model.json` describes the model's
shape so resuming with another model fails with what to change, before any
tensor is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from recsys_mtl.config.loader import ConfigError, to_dict
from recsys_mtl.config.train import LEGACY_ARCHITECTURE_SECTIONS
from recsys_mtl.weighting import weighting_signature  # the package: every method registered

if TYPE_CHECKING:
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.config.train import TrainConfig

log = logging.getLogger(__name__)

LATEST = "latest"
SIGNATURE = "model.json"
CHECKPOINTS_DIR = "checkpoints"  # under train.output_dir, unless train.checkpoint.dir says otherwise
CONFIG_FILE = "config.yaml"  # the resolved training config, in every checkpoint the trainer saves
SPEC_FILE = "feature_spec.yaml"  # the feature spec the model was built from, beside it
CHECKPOINT_DIR = "checkpoint"  # a model directory's (a tracked run's `model/` artifact) final checkpoint folder
RNG_KEY = "rng"  # the trainer's key for every rank's RNG states (a pickled list by rank)
METRICS_KEY = "train_metrics"  # every rank's streaming-metric lifetime states (a pickled list by rank, or None)
_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"


RESUME_ADVICE = ("Resume with the config (and feature spec) it was trained with, or start fresh: set "
                 "train.checkpoint.resume: false or point train.checkpoint.dir (or train.output_dir) at a new directory.")


def model_signature(spec: FeatureSpec, config: TrainConfig) -> dict[str, Any]:
    """What must match for a checkpoint to load: table shapes, features, tasks, architecture, optimizers."""
    return {
        "tables": {name: [t.num_embeddings, t.embedding_dim] for name, t in spec.tables.items()},
        "sparse_features": spec.sparse_names,
        "dense_features": spec.dense_names,
        "tasks": spec.task_names,
        **spec.task_type_signature(),
        # wide_l2 and feature_dropout act in training only, not on the model's shape or output: a checkpoint
        # trained with other values (or before they existed) loads. An empty per-task map (wide_id_scale: {})
        # is its feature off, the same model as a checkpoint made before the map existed: it is left out
        # the architecture's arguments under its name (`"mmoe": {...}`), not every architecture's section;
        # fp32 tables (the default, and every checkpoint from before embedding_dtype) are left out likewise
        "model": {**{k: v for k, v in to_dict(config.model).items()
                     if k not in ("wide_l2", "wide_l2_tasks", "feature_dropout", "args", *LEGACY_ARCHITECTURE_SECTIONS)
                     and v != {} and not (k == "embedding_dtype" and v == "fp32")},
                  config.model.architecture: config.model.architecture_args()},
        "optim": {"embedding": config.optim.embedding.type, "dense": config.optim.dense.type},
        # the method's name; GO4Align's rec mode adds its mode (its state is not paper mode's)
        "weighting": weighting_signature(config.weighting.method, config.weighting.args),
    }


class CheckpointMismatchError(ConfigError):
    """The checkpoint was written by a model of another shape than the configured one."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# DCP wraps each rank's error in a CheckpointException, which derives from BaseException, not Exception
DCP_ERRORS = (Exception, CheckpointException)


def describe_dcp_error(exc: BaseException) -> str:
    """One line per failing rank (`EOFError` ...), not DCP's multi-rank traceback dump."""
    if isinstance(exc, CheckpointException):
        parts = [f"rank {rank}: {type(e).__name__}: {str(e)[:300]}".rstrip(": ") for rank, (e, _) in exc.failures.items()]
        return "; ".join(parts)
    return f"{type(exc).__name__}: {str(exc)[:500]}"


def upgrade_signature(saved: dict[str, Any]) -> dict[str, Any]:
    """A signature saved before `model.args`: it held every built-in architecture's section; only the chosen one's
    describes the model (the same `"mmoe": {...}` a signature has now)."""
    model = saved.get("model")
    if not isinstance(model, dict):
        return saved
    chosen = model.get("architecture")
    return {**saved, "model": {k: v for k, v in model.items()
                               if k not in LEGACY_ARCHITECTURE_SECTIONS or k == chosen}}


def _signature_diff(saved: dict, current: dict) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{d}" for d in _signature_diff(a, b)]
        else:
            diffs.append(f"{key}: checkpoint has {a!r}, this config has {b!r}")
    return diffs


class CheckpointManager:
    """Saves and finds checkpoints in one directory; every rank calls save/load together."""

    def __init__(self, directory: str | Path, *, keep: int = 2, rank: int = 0, world_size: int = 1) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.rank = rank
        self.world_size = world_size
        self._earlier_run: list[Path] = []  # removed once this run's first checkpoint is in place

    def start_fresh(self) -> list[Path]:
        """This run does not continue the checkpoints in the directory: its first save replaces them (step
        numbers of two runs do not compare, so rotation alone could keep the old run's and drop the new one's).
        Returns them; until that save they stay, so a run that fails early loses nothing."""
        self._earlier_run = self.complete_checkpoints()
        return list(self._earlier_run)

    def is_earlier_runs(self, path: Path) -> bool:
        """Whether `path` is a checkpoint of the earlier run that a fresh run will replace (still on disk)."""
        return path in self._earlier_run

    # -- finding -------------------------------------------------------------------------
    @staticmethod
    def is_complete(path: Path) -> bool:
        return (path / ".metadata").is_file() and (path / SIGNATURE).is_file()

    def complete_checkpoints(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.name.startswith(_PREFIX) and self.is_complete(p)]
        return sorted(found, key=step_number)

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, else the newest complete one, else None."""
        pointer = self.directory / LATEST
        if pointer.is_file():
            candidate = self.directory / pointer.read_text().strip()
            if self.is_complete(candidate):
                return candidate
            log.warning("checkpoint pointer %s names %s, which is incomplete; scanning", pointer, candidate)
        found = self.complete_checkpoints()
        return found[-1] if found else None

    # -- saving --------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], signature: dict[str, Any],
             files: dict[str, str] | None = None) -> Path:
        """Write `state` (model/optimizer state dicts, bytes objects) as checkpoint `step`, with `files`
        (name -> text, written by rank 0) inside it, so they appear together with the checkpoint or not at all."""
        if files and SIGNATURE in files:
            raise ValueError(f"{SIGNATURE} is the checkpoint's own signature file; name the extra file otherwise")
        name = f"{_PREFIX}{step:08d}"
        final = self.directory / name
        tmp = self.directory / f"{_TMP_PREFIX}{name}"
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(f"{_TMP_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        self._barrier()
        try:
            dcp.save(_without_empty_dicts(state), checkpoint_id=str(tmp))
        except CheckpointException as exc:
            _raise_interrupt(exc)
            raise
        self._barrier()
        if self.rank == 0:
            for file_name, text in {SIGNATURE: json.dumps(signature, indent=1, sort_keys=True), **(files or {})}.items():
                with open(tmp / file_name, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            if final.exists():  # same step saved again (e.g. the end of a resumed run)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
            _write_atomic(self.directory / LATEST, name + "\n")
            # removed: checkpoints not of this run (an earlier run's, see start_fresh, and any of a higher step, which
            # this run, whose steps only grow, did not write: a fresh run that died before removing the earlier
            # run's leaves them), then this run's beyond the newest `keep`
            ours = []
            for old in self.complete_checkpoints():
                if old != final and (old in self._earlier_run or step_number(old) > step):
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    ours.append(old)
            for old in ours[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self._earlier_run = []
        self._barrier()
        return final

    # -- loading -------------------------------------------------------------------------
    def check_signature(self, path: Path, signature: dict[str, Any], advice: str = RESUME_ADVICE,
                        ignore: tuple[str, ...] = ()) -> None:
        """Refuse a checkpoint whose model.json differs from `signature` (keys in `ignore` aside), listing
        each difference and then `advice` (what to change: it depends on who loads the checkpoint)."""
        saved = {k: v for k, v in upgrade_signature(json.loads((path / SIGNATURE).read_text())).items()
                 if k not in ignore}
        current = {k: v for k, v in json.loads(json.dumps(signature)).items() if k not in ignore}
        diffs = _signature_diff(saved, current)
        if diffs:
            raise CheckpointMismatchError(f"checkpoint {path} does not match this config:\n  " + "\n  ".join(diffs)
                                          + "\n" + advice)

    def load(self, path: Path, state: dict[str, Any], signature: dict[str, Any], advice: str = RESUME_ADVICE) -> None:
        """Fill `state` in place from checkpoint `path` (after checking the model's shape)."""
        self.check_signature(path, signature, advice)
        loaded = _without_empty_dicts(state)
        try:
            dcp.load(loaded, checkpoint_id=str(path))
        except DCP_ERRORS as exc:
            _raise_interrupt(exc)
            raise _unloadable(path, exc, advice) from exc
        _update_from(state, loaded)

    @staticmethod
    def top_level_keys(path: Path) -> set[str]:
        """The top-level keys checkpoint `path` holds (read from its DCP metadata alone)."""
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
        return {k.split(".", 1)[0] for k in metadata.state_dict_metadata}

    @staticmethod
    def has_key(path: Path, key: str) -> bool:
        """Whether checkpoint `path` holds top-level `key`."""
        return key in CheckpointManager.top_level_keys(path)

    def read_object(self, path: Path, key: str) -> Any:
        """One bytes object of checkpoint `path`, unpacked; read by this rank alone (no collective)."""
        state = {key: b""}
        try:
            dcp.load(state, checkpoint_id=str(path), no_dist=True)
        except DCP_ERRORS as exc:
            _raise_interrupt(exc)
            raise _unloadable(path, exc, RESUME_ADVICE) from exc
        return unpack(state[key])

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def step_number(checkpoint: Path) -> int:
    """The step a checkpoint folder (`step-00000120`) holds."""
    return int(checkpoint.name[len(_PREFIX):])


def _without_empty_dicts(state: dict) -> dict:
    """`state` without its empty dicts (same leaves, new dicts), for DCP.

    A rank's state may lack keys another rank saved (TorchRec keeps a table-wise table's optimizer state on its
    owner only), which sends DCP's load into its fallback for checkpoints from before torch 2.4; that fallback
    wants every empty dict as a saved key, but a save writes none. State without tensors or values is an empty
    dict: equal weighting's, and SGD's per-table state.
    """
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            value = _without_empty_dicts(value)
            if not value:
                continue
        out[key] = value
    return out


def _update_from(state: dict, loaded: dict) -> None:
    """Put what DCP loaded into `loaded` (a `_without_empty_dicts` copy) back into `state`: tensors are loaded in
    place, shared by both; other values (bytes objects, counters) are replaced in the copy only."""
    for key, value in loaded.items():
        if isinstance(value, dict) and isinstance(state.get(key), dict):
            _update_from(state[key], value)
        else:
            state[key] = value


def _raise_interrupt(exc: BaseException) -> None:
    """DCP wraps whatever a rank raised, Ctrl-C and SIGTERM included, in a CheckpointException: give a
    KeyboardInterrupt back as itself (a save in progress leaves only its temp folder, removed by the next save)."""
    if isinstance(exc, CheckpointException):
        for e, _ in exc.failures.values():
            if isinstance(e, KeyboardInterrupt):
                raise e from None


def _unloadable(path: Path, exc: BaseException, advice: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"checkpoint {path} could not be loaded into this model ({describe_dcp_error(exc)}). If the files are "
        "damaged (a disk error, a copy cut short), delete that step's folder to use the previous checkpoint. " + advice)


def pack(obj: Any) -> bytes:
    """Non-tensor state (data position, RNG, counters) travels through DCP as one bytes object."""
    return pickle.dumps(obj)


def unpack(data: Any) -> Any:
    if isinstance(data, (bytes, bytearray)):
        return pickle.loads(data)
    if hasattr(data, "read"):
        return pickle.loads(data.read())
    raise TypeError(f"unexpected checkpoint object {type(data).__name__}")


__all__ = ["CheckpointManager", "model_signature", "CHECKPOINT_DIR", "CHECKPOINTS_DIR", "CONFIG_FILE", "SPEC_FILE", "CheckpointMismatchError", "RESUME_ADVICE", "METRICS_KEY", "RNG_KEY", "pack", "unpack", "rng_state", "set_rng_state"]
