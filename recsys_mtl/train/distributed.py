"""Process group setup: torchrun's env:// when launched by it, else a one-process group.

nccl on CUDA, gloo on CPU. DMP always gets a process group, so one code path
serves 1 and N processes.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


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


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
