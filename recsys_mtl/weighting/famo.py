"""FAMO: fast adaptive multitask optimisation (Liu, Liang, Chen, Liu, NeurIPS 2023, arXiv:2306.03792).

With task logits xi (z = softmax(xi) over the present tasks) and D = L - L_min + 1e-8
(L_min = 0 here, as the official code's default), the official loss is
sum_m (z_m / c) log D_m with c = sum_m z_m / D_m (detached). Its gradient equals that of
sum_m w_m L_m with

    w_m = z_m / (c * D_m)          (so sum_m w_m = 1)

which is what `forward` returns. After the optimizer step the trainer re-evaluates the
same batch's losses L' and calls `post_step(L', present)`:

    delta_m = log D_m - log D'_m,   grad_xi = J_softmax(xi)^T delta,   Adam(lr, weight_decay) step on xi

(the official `update`). Only present tasks are updated; absent tasks get weight 0.
Loss scaling: invariant (w depends on L only through L / sum-normalisation, delta through log ratios).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, check_number, register_weighting
from recsys_mtl.weighting.masked_adam import masked_adam_step_

EPS = 1e-8


@register_weighting("famo")
class FAMO(WeightingMethod):
    """Args: num_tasks; lr: Adam step size of the logits (> 0, default 0.025);
    weight_decay: L2 on the logits, the official `gamma` (>= 0, default 1e-5)."""

    when_to_use = "Balanced loss decrease (Liu et al. 2023); one extra forward of each batch per step."

    needs_post_step_losses: ClassVar[bool] = True

    def __init__(self, num_tasks: int, lr: float = 0.025, weight_decay: float = 1e-5) -> None:
        super().__init__(num_tasks)
        self.lr = check_number("FAMO", "lr", lr, low=0.0, low_inclusive=False)
        self.weight_decay = check_number("FAMO", "weight_decay", weight_decay, low=0.0)
        self.register_buffer("logits", torch.zeros(num_tasks))
        self.register_buffer("prev_losses", torch.ones(num_tasks))
        self.register_buffer("prev_present", torch.zeros(num_tasks, dtype=torch.bool))
        self.register_buffer("adam_exp_avg", torch.zeros(num_tasks))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(num_tasks))
        self.register_buffer("adam_steps", torch.zeros(num_tasks, dtype=torch.long))

    def _masked_softmax(self, present: torch.Tensor) -> torch.Tensor:
        z = torch.softmax(torch.where(present, self.logits, torch.full_like(self.logits, float("-inf"))), dim=0)
        return torch.where(present, z, torch.zeros_like(z))

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        dt = self.logits.dtype
        loss = losses.to(dt)
        z = self._masked_softmax(present)
        d = loss + EPS
        ratio = torch.where(present, z / d, torch.zeros_like(z))
        w = ratio / ratio.sum().clamp_min(torch.finfo(dt).tiny)
        self.prev_losses.copy_(torch.where(present, loss, self.prev_losses))
        self.prev_present.copy_(present)
        return w.to(losses.dtype)

    def post_step(self, losses_after: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Same batch's per-task losses after the optimizer step (detached, all-reduced like forward's)."""
        losses_after = losses_after.detach()
        mask = self.prev_present if present is None else self.prev_present & present.to(torch.bool)
        dt = self.logits.dtype
        delta = torch.log(self.prev_losses + EPS) - torch.log(losses_after.to(dt) + EPS)
        delta = torch.where(mask, delta, torch.zeros_like(delta))
        z = self._masked_softmax(mask)
        grad = z * (delta - (z * delta).sum())  # J_softmax^T delta over the masked tasks
        masked_adam_step_(self.logits, grad, self.adam_exp_avg, self.adam_exp_avg_sq, self.adam_steps, mask,
                          lr=self.lr, weight_decay=self.weight_decay)

    def tracking_state(self) -> dict[str, torch.Tensor]:
        return {"logits": self.logits}
