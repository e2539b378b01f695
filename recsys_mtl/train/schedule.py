"""Learning-rate schedule (optim.schedule): warmup, then linear or cosine decay, on both optimizers.

The factor is a function of the global step and the planned number of steps only, so a resumed run
continues the same schedule with nothing to checkpoint. It is applied by setting every param group's
lr before a step: the dense optimizer reads it in step(), and TorchRec's fused embedding optimizers
pass param_groups[0]["lr"] to FBGEMM in zero_grad(), before the backward that applies their update.
"""

from __future__ import annotations

import math

from recsys_mtl.config.train import ScheduleConfig


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The factor of the base learning rates for the step after `step` steps (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "none":
        return 1.0
    progress = min((step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1), 1.0)
    shape = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


class LrSchedule:
    """Scales the learning rates of `optimizer`'s param groups (as they are at construction)."""

    def __init__(self, optimizer, cfg: ScheduleConfig, total_steps: int) -> None:
        self.cfg, self.total_steps = cfg, total_steps
        self.groups = list(optimizer.param_groups)
        self.base_lrs = [float(group["lr"]) for group in self.groups]

    def apply(self, step: int) -> float:
        factor = lr_factor(step, self.total_steps, self.cfg)
        for group, base in zip(self.groups, self.base_lrs):
            group["lr"] = base * factor
        return factor


__all__ = ["LrSchedule", "lr_factor"]
