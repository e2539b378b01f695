"""Static weights: fixed per-task weights from the config.

    w_m = c_m  if task m is present, else 0

Loss scaling: weights do not depend on the losses (invariant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from recsys_mtl.config.loader import as_number
from recsys_mtl.weighting.base import LabelStats, WeightingMethod, register_weighting


@register_weighting("static")
class StaticWeights(WeightingMethod):
    """Args: num_tasks; weights: T finite non-negative numbers (buffer `static_weights`, not in the state dict)."""

    when_to_use = "Fixed per-task weights, e.g. business value, or 1/H(base rate) to optimise the sum of NEs."

    def __init__(self, num_tasks: int, weights: Sequence[float]) -> None:
        super().__init__(num_tasks)
        values = [as_number(v) for v in weights] if isinstance(weights, Sequence) and not isinstance(weights, str) \
            else None
        if values is None or len(values) != num_tasks:
            raise ValueError(f"StaticWeights: weights must be a list of {num_tasks} numbers (one per task), got {weights!r}")
        for i, v in enumerate(values):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"StaticWeights: weights[{i}] must be a finite number >= 0, got {v!r}")
        # config, not learned state: not persistent, so a resume or a warm start uses the config's weights
        # (checkpoints written before this still hold the key; DCP leaves it unread)
        self.register_buffer("static_weights", torch.tensor([float(v) for v in values]), persistent=False)

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        w = self.static_weights.to(losses.dtype)
        return torch.where(present, w, torch.zeros_like(w))
