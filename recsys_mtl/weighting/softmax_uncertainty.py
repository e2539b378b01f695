"""Soft optimal uncertainty weighting, UW-SO (Kirchdorfer et al., GCPR 2024, arXiv:2408.07985).

The optimal uncertainty weight of a task is analytically 1 / L_m; UW-SO softens it
with a softmax at temperature tau over the present tasks:

    w = softmax( (1 / (L + eps)) / tau )      (eps = 1e-8, as the authors' code)

Weights sum to 1 over the present tasks. Stateless.
Loss scaling: not invariant; multiplying the losses by c is the same as multiplying tau by c.
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, check_number, register_weighting

EPS = 1e-8


@register_weighting("softmax_uncertainty")
class SoftmaxUncertaintyWeighting(WeightingMethod):
    """Args: num_tasks; temperature: tau (> 0, default 1.0)."""

    when_to_use = "Softmax of 1/L: at tau = 1 nearly all weight goes to the rarest tasks (measured +13-23% NE); avoid with rare tasks."

    def __init__(self, num_tasks: int, temperature: float = 1.0) -> None:
        super().__init__(num_tasks)
        self.temperature = check_number("SoftmaxUncertaintyWeighting", "temperature", temperature, low=0.0, low_inclusive=False)

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        # at least float32: in fp16, EPS rounds to 0 and 1/L overflows for L < 1.5e-5, and softmax(inf) is nan
        logits = (1 / (losses.to(torch.promote_types(losses.dtype, torch.float32)) + EPS)) / self.temperature
        logits = torch.where(present, logits, torch.full_like(logits, float("-inf")))
        w = torch.softmax(logits, dim=0)
        return torch.where(present, w, torch.zeros_like(w)).to(losses.dtype)  # no present task: softmax nan, weights 0
