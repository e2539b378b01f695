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

import base64
import errno
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
from recsys_mtl.train.distributed import computed_on_rank0
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
RNG_KEY = "rng"  # the trainer's key for every rank's RNG states (a packed list by rank)
METRICS_KEY = "train_metrics"  # every rank's streaming-metric lifetime states (a packed list by rank, or None)
_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"


RESUME_ADVICE = ("Resume with the config (and feature spec) it was trained with, or start fresh: set "
                 "train.checkpoint.resume: false or point train.checkpoint.dir (or train.output_dir) at a new directory.")


class DiskFull(OSError):
    """A checkpoint could not be written for want of space; the earlier ones are intact."""

    exit_code = 1  # the CLI prints it as one line


def _free_bytes(directory: Path) -> int:
    for path in (directory, *directory.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return 0


def _is_disk_full(exc: BaseException, free: int, newest: Path | None) -> bool:
    """ENOSPC/EDQUOT anywhere in `exc` (DCP wraps each rank's error), or torch's zip writer's own message for a
    short write ('unexpected pos', 'file write failed') when less is free than the newest checkpoint takes."""
    errors = [e for e, _ in exc.failures.values()] if isinstance(exc, CheckpointException) else [exc]
    seen: list[BaseException] = []
    while errors:
        e = errors.pop()
        if e is None or e in seen:
            continue
        seen.append(e)
        errors += [e.__cause__, e.__context__]
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in seen):
        return True
    short_write = any(m in str(e) for e in seen for m in ("unexpected pos", "file write failed", "No space left"))
    needed = sum(f.stat().st_size for f in newest.iterdir() if f.is_file()) if newest else 1 << 20
    return short_write and free < needed


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
        """Write `state` (model/optimizer state dicts, packed payloads) as checkpoint `step`, with `files`
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
            self._raise_if_disk_full(exc, step, tmp)
            raise
        self._barrier()

        def commit() -> None:  # rank 0; its failure (a full disk) reaches every rank instead of hanging them
            try:
                self._commit(step, name, tmp, final, signature, files)
            except OSError as exc:
                self._raise_if_disk_full(exc, step, tmp)
                raise

        computed_on_rank0(commit, self.world_size)
        self._earlier_run = []
        self._barrier()
        return final

    def _raise_if_disk_full(self, exc: BaseException, step: int, tmp: Path) -> None:
        """A save that failed for want of space: remove its partial folder (rank 0) and raise DiskFull."""
        free = _free_bytes(self.directory)
        newest = self.latest()
        if not _is_disk_full(exc, free, newest):
            return
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFull(
            f"checkpoint step {step} not saved: the disk holding {self.directory} is full ({free / 2**20:.1f} MiB "
            f"free); the earlier checkpoints are intact ({f'newest {newest.name}' if newest else 'none yet'}): free "
            "space (or set train.checkpoint.dir elsewhere), then run the same command to resume") from None

    def _commit(self, step: int, name: str, tmp: Path, final: Path, signature: dict[str, Any],
                files: dict[str, str] | None) -> None:
        """Rank 0: the side files into the temp folder, then the folder and `latest` into place, then rotation."""
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
            _payload_placeholders(path, loaded)
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
        """One packed payload of checkpoint `path`, unpacked; read by this rank alone (no collective)."""
        state = {key: b""}
        try:
            _payload_placeholders(path, state)
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


PAYLOAD_MAGIC = b"recsys-mtl-json-1\n"  # a payload's first bytes; pickled ones (before JSON) start with 0x80


def pack(obj: Any) -> torch.Tensor:
    """Non-tensor state (data position, RNG, counters) as one uint8 tensor of tagged JSON: DCP stores it as a
    tensor (a bytes object would go through pickle on save and torch.load(weights_only=False) on load), and
    reading it back runs no code. Tensors and arrays inside are tagged with dtype, shape and base64 data."""
    text = json.dumps(_to_json(obj), separators=(",", ":"), allow_nan=True)
    return torch.frombuffer(bytearray(PAYLOAD_MAGIC + text.encode()), dtype=torch.uint8)


def unpack(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        data = data.numpy().tobytes()
    elif hasattr(data, "read"):
        data = data.read()
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"unexpected checkpoint object {type(data).__name__}")
    if bytes(data[:len(PAYLOAD_MAGIC)]) == PAYLOAD_MAGIC:
        return _from_json(json.loads(bytes(data[len(PAYLOAD_MAGIC):])))
    # A checkpoint written before JSON payloads: read on resume only (the run's own output_dir, which it trusts as
    # before); the model loads of evaluate and warm starts never read payloads
    log.warning("a checkpoint payload is in the pickled format of recsys-mtl before JSON payloads: read with pickle, "
                "as before (your own checkpoint); the next checkpoint is written as JSON")
    return pickle.loads(bytes(data))


_DTYPES = {str(t).removeprefix("torch."): t for t in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                                       torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                                       torch.bool)}


def _to_json(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        raw = t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
        return {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "data": base64.b64encode(raw.numpy().tobytes()).decode()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.dtype.str, "shape": list(obj.shape),
                "data": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _to_json(v) for k, v in obj.items()}
        return {"__items__": [[_to_json(k), _to_json(v)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint payload: cannot store a {type(obj).__name__} as JSON")


def _from_json(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        dtype = _DTYPES[obj["__tensor__"]]  # a KeyError for anything else: nothing but these is built
        raw = torch.frombuffer(bytearray(base64.b64decode(obj["data"])), dtype=torch.uint8)
        return raw.view(dtype).reshape(obj["shape"]).clone() if raw.numel() else torch.empty(obj["shape"], dtype=dtype)
    if "__ndarray__" in obj:
        dtype = np.dtype(obj["__ndarray__"])
        if dtype.hasobject:
            raise ValueError("checkpoint payload: an object array is not data")
        return np.frombuffer(base64.b64decode(obj["data"]), dtype=dtype).reshape(obj["shape"]).copy()
    if "__tuple__" in obj:
        return tuple(_from_json(v) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_hashable(_from_json(k)): _from_json(v) for k, v in obj["__items__"]}
    return {k: _from_json(v) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _payload_placeholders(path: Path, state: dict) -> None:
    """Give each top-level bytes placeholder of `state` that the checkpoint holds as a tensor (a JSON payload) a
    uint8 tensor of the saved size, which DCP loads in place; a bytes item (a pickled payload of an older
    checkpoint) keeps its placeholder."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = None
    for key, value in state.items():
        if isinstance(value, (bytes, bytearray)):
            if metadata is None:
                metadata = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
            saved = metadata.get(key)
            if isinstance(saved, TensorStorageMetadata):
                state[key] = torch.empty(saved.size, dtype=torch.uint8)


__all__ = ["CheckpointManager", "model_signature", "CHECKPOINT_DIR", "CHECKPOINTS_DIR", "CONFIG_FILE", "SPEC_FILE", "CheckpointMismatchError", "DiskFull", "RESUME_ADVICE", "METRICS_KEY", "RNG_KEY", "pack", "unpack", "rng_state", "set_rng_state"]
