"""Uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018, arXiv:1705.07115).

Each task has a learned log variance s_m; the objective is

    sum_m exp(-s_m) * L_m + s_m          =>  w_m = exp(-s_m)

Weights are detached in this API, so s is not trained by the trainer's optimizer:
each step the module applies one Adam step (lr, on present tasks only) to s with the
analytic gradient d/ds_m = 1 - exp(-s_m) * L_m, after returning w from the current s
(the same order as joint training: the loss of step t uses s_t). s_0 = 0, so the first
step is equal weighting. The fixed point is s_m = log L_m, i.e. w_m = 1 / L_m.

Loss scaling: not invariant; multiplying the losses by c drives the weights towards 1/c times.
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, check_number, register_weighting
from recsys_mtl.weighting.masked_adam import masked_adam_step_


@register_weighting("uncertainty")
class UncertaintyWeighting(WeightingMethod):
    """Args: num_tasks; lr: Adam step size for the log variances (> 0, default 1e-3)."""

    when_to_use = "Losses of different kinds and scales: learns a log-variance per task (Kendall et al. 2018)."

    def __init__(self, num_tasks: int, lr: float = 1e-3) -> None:
        super().__init__(num_tasks)
        self.lr = check_number("UncertaintyWeighting", "lr", lr, low=0.0, low_inclusive=False)
        self.register_buffer("log_var", torch.zeros(num_tasks))
        self.register_buffer("adam_exp_avg", torch.zeros(num_tasks))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(num_tasks))
        self.register_buffer("adam_steps", torch.zeros(num_tasks, dtype=torch.long))

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        s = self.log_var
        w = torch.exp(-s)
        weights = torch.where(present, w, torch.zeros_like(w)).to(losses.dtype)
        grad = 1 - w * losses.to(s.dtype)
        masked_adam_step_(s, grad, self.adam_exp_avg, self.adam_exp_avg_sq, self.adam_steps, present, lr=self.lr)
        return weights

    def tracking_state(self) -> dict[str, torch.Tensor]:
        return {"log_var": self.log_var}
