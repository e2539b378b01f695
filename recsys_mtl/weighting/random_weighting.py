"""Random loss weighting, RLW (Lin, Ye, Xu, Shi, Zhang, Kwok, "Reasonable Effectiveness of
Random Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022, arXiv:2111.10603):

    lambda ~ N(0, I),   w = softmax(lambda) over the present tasks   (sum 1, as the authors' code)

The normal draws come from a counter-based hash of (seed, step, task index) in integer
tensor ops, not from a torch.Generator: the stream is part of `state_dict` (buffer `step`),
resumes exactly from a checkpoint, is the same on every rank, and needs no host sync
(CUDA-graph and torch.compile friendly). `step` advances every call.
Loss scaling: invariant (weights ignore the losses). Permutation: equivariant only in
distribution (the draw of task m depends on its index m).
"""

from __future__ import annotations

import math

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, register_weighting

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64, without int64 overflow."""
    hi, lo = c >> 16, c & 0xFFFF
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash, on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_normal(seed: int, step: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """n standard normal draws determined by (seed, step), via Box-Muller on hashed counters."""
    idx = torch.arange(2 * n, device=step.device, dtype=torch.int64)
    base = _hash32((seed & _M32) ^ _hash32((step & _M32) ^ 0x9E3779B9))
    u = (_hash32(base ^ _hash32(idx)).to(torch.float64) + 0.5) / 2.0**32  # uniform in (0, 1)
    u1, u2 = u[:n], u[n:]
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)


@register_weighting("random")
class RandomLossWeighting(WeightingMethod):
    """Args: num_tasks; seed: integer in [0, 2^32) (default 0)."""

    when_to_use = "A sanity baseline: random weights each step (Lin et al. 2022)."

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        super().__init__(num_tasks)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ValueError(f"RandomLossWeighting: seed must be an integer in [0, 2**32), got {seed!r}")
        self.seed = seed
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        draws = counter_normal(self.seed, self.step, self.num_tasks, losses.dtype)
        self.step.add_(1)
        w = torch.softmax(torch.where(present, draws, torch.full_like(draws, float("-inf"))), dim=0)
        return torch.where(present, w, torch.zeros_like(w))
