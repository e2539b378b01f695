"""Process group setup: torchrun's env:// when launched by it, else a one-process group.

nccl on CUDA, gloo on CPU. DMP always gets a process group, so one code path
serves 1 and N processes.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from recsys_mtl.config.loader import ConfigError

            raise ConfigError("train.device: 'cuda' was asked for but no GPU is visible; set it to 'auto' or 'cpu'")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join torchrun's group (RANK/WORLD_SIZE set) or create a single-process one; idempotent."""
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if launched else 0
    device = resolve_device(device_preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend=backend)
        else:
            os.environ.setdefault("LOCAL_WORLD_SIZE", "1")  # read by TorchRec's topology code
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        backend = dist.get_backend()
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def die_with_launcher() -> None:
    """Under torchrun, end this worker when the launcher dies, even by SIGKILL (Linux).

    torchrun starts each worker in its own session, so killing the launcher or its process group
    otherwise leaves the workers training on, unseen, into the same output_dir.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # best effort: the output_dir lock still stops a second run from writing alongside
    if os.getppid() == 1:  # the launcher died before the prctl took effect
        os._exit(1)


def computed_on_rank0(compute: Callable[[], T], world_size: int) -> T:
    """`compute()` on rank 0, its result sent to every rank (picklable); rank 0's exception is raised on all ranks.

    The other ranks would otherwise wait in the broadcast for a result that never comes, until the
    launcher's timeout (or, past it, fail in their next collective with a traceback of their own). The other
    ranks raise the same exception (so a ConfigError is one line on each), or a RuntimeError naming it if it
    does not pickle.
    """
    if world_size == 1:
        return compute()
    result, error = None, None
    if dist.get_rank() == 0:
        try:
            result = compute()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks are told
            error = exc
    sent: Any = error
    if error is not None:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - any pickling failure: send its text
            sent = RuntimeError(f"rank 0 failed, so this rank stops too: {type(error).__name__}: {error}")
    box = [(result, sent)]
    dist.broadcast_object_list(box, src=0)
    result, sent = box[0]
    if error is not None:
        raise error
    if sent is not None:
        raise sent
    return result  # type: ignore[return-value]


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
