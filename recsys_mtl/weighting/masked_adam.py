"""Adam on a per-task state vector, updating only the masked (present) tasks, with no host sync.

Methods that learn their own per-task state (FAMO's logits, uncertainty weighting's
log variances) step it here instead of through the trainer's optimizer, so the trainer
stays method-agnostic and the state (moments, per-task step counts) is in buffers.
Per-task step counts keep Adam's bias correction right for tasks that skip steps.
"""

from __future__ import annotations

import torch


def masked_adam_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    steps: torch.Tensor,
    mask: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> None:
    """In-place Adam (L2 weight decay added to the gradient, as torch.optim.Adam) on `param[mask]`."""
    b1, b2 = betas
    grad = grad + weight_decay * param
    new_steps = steps + mask.to(steps.dtype)
    m = torch.where(mask, b1 * exp_avg + (1 - b1) * grad, exp_avg)
    v = torch.where(mask, b2 * exp_avg_sq + (1 - b2) * grad * grad, exp_avg_sq)
    t = new_steps.clamp_min(1).to(param.dtype)
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    update = lr * m_hat / (v_hat.sqrt() + eps)
    param.copy_(torch.where(mask, param - update, param))
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    steps.copy_(new_steps)
