"""Dynamic weight average, DWA (Liu, Johns, Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, arXiv:1803.10704).

    r_m = L_m(t-1) / L_m(t-2),    w = n * softmax(r / tau) over the n present tasks

The paper uses epoch-average losses; here t counts the steps in which task m was present
(its last two observed losses, kept in buffers). A task with fewer than two observations
has r_m = 1, so the first steps are equal weighting. A task whose loss is at most `min_loss`
(default 1e-6, as GO4Align's guard) is left out of that step like an absent one: an L = 0 in
the history would otherwise give r = L/0, all of the weight, two steps later. The ratio of
per-step losses is still noisy for rare tasks (a batch without positives has a small loss);
that is DWA on per-step losses.
Loss scaling: invariant (only loss ratios enter).
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, check_number, register_weighting


@register_weighting("dwa")
class DynamicWeightAverage(WeightingMethod):
    """Args: num_tasks; temperature: tau (> 0, default 2.0 as the paper); min_loss (>= 0, default 1e-6)."""

    when_to_use = "Tasks whose losses fall at different speeds: weights from the ratio of the last two losses (Liu et al. 2019)."

    def __init__(self, num_tasks: int, temperature: float = 2.0, min_loss: float = 1e-6) -> None:
        super().__init__(num_tasks)
        self.temperature = check_number("DynamicWeightAverage", "temperature", temperature, low=0.0, low_inclusive=False)
        self.min_loss = check_number("DynamicWeightAverage", "min_loss", min_loss, low=0.0)
        self.register_buffer("loss_prev", torch.zeros(num_tasks))  # L(t-1)
        self.register_buffer("loss_prev2", torch.zeros(num_tasks))  # L(t-2)
        self.register_buffer("seen", torch.zeros(num_tasks, dtype=torch.long))

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        dt = self.loss_prev.dtype
        present = present & (losses.to(dt) > self.min_loss)  # no signal this step: left out, state unmoved
        ratio = torch.where(self.seen >= 2, self.loss_prev / self.loss_prev2.clamp_min(1e-12), torch.ones_like(self.loss_prev))
        logits = torch.where(present, ratio / self.temperature, torch.full_like(ratio, float("-inf")))
        n = present.sum().to(dt)
        w = torch.where(present, n * torch.softmax(logits, dim=0), torch.zeros_like(ratio))
        self.loss_prev2.copy_(torch.where(present, self.loss_prev, self.loss_prev2))
        self.loss_prev.copy_(torch.where(present, losses.to(dt), self.loss_prev))
        self.seen.add_(present.long())
        return w.to(losses.dtype)
