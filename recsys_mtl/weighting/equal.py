from __future__ import annotations

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, register_weighting


@register_weighting("equal")
class EqualWeights(WeightingMethod):
    """w_m = 1 for every task with a label in the batch, 0 otherwise. Loss scaling: invariant."""

    when_to_use = "Start here: weight 1 for every labelled task. The baseline every other method is measured against."

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        return present.to(losses.dtype)
