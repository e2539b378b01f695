"""Starving-task monitor: warn when a task's weight stays below a threshold for N steps.

`update(weights, present)` runs every step on the device (counters in buffers, no host
sync); `check()` is called at logging time: it reads the counters (one host sync) and
warns, naming each task, once per starvation episode (a task warns again only after its
weight has recovered and then starved again). Steps where a task is absent do not count
and do not reset its counter.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from recsys_mtl.weighting.base import check_number

logger = logging.getLogger(__name__)


class StarvingTaskWarning(UserWarning):
    """A task's weight stayed below the threshold for `patience` consecutive steps."""


class StarvationMonitor(nn.Module):
    def __init__(self, task_names: Sequence[str], threshold: float, patience: int) -> None:
        super().__init__()
        names = list(task_names) if not isinstance(task_names, str) else []
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"StarvationMonitor: task_names must be a non-empty list of non-empty strings, got {task_names!r}")
        self.task_names = names
        self.threshold = check_number("StarvationMonitor", "threshold", threshold, low=0.0)
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ValueError(f"StarvationMonitor: patience must be an integer >= 1, got {patience!r}")
        self.patience = patience
        self.register_buffer("steps_below", torch.zeros(len(names), dtype=torch.long))
        self.register_buffer("warned", torch.zeros(len(names), dtype=torch.bool))

    def update(self, weights: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Count one step (device only)."""
        weights = weights.detach()
        if present is None:
            present = torch.ones_like(weights, dtype=torch.bool)
        below = weights < self.threshold
        counted = torch.where(below, self.steps_below + 1, torch.zeros_like(self.steps_below))
        new = torch.where(present, counted, self.steps_below)
        self.warned.copy_(self.warned & (new > 0))  # a recovery re-arms the warning
        self.steps_below.copy_(new)

    def check(self) -> list[str]:
        """Host sync: warn for each newly starving task; returns the names of all starving tasks."""
        starving = self.steps_below >= self.patience
        fresh = (starving & ~self.warned).tolist()
        steps = self.steps_below.tolist()
        for name, new, n in zip(self.task_names, fresh, steps):
            if new:
                msg = f"task {name!r} is starving: its weight stayed below {self.threshold:g} for {n} steps"
                logger.warning(msg)
                warnings.warn(msg, StarvingTaskWarning, stacklevel=2)
        self.warned.copy_(self.warned | starving)
        return [name for name, s in zip(self.task_names, starving.tolist()) if s]
