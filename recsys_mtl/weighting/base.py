"""The task-weighting plug-in API: one nn.Module per method, one registry.

A method maps the (all-reduced, detached) per-task losses L[T] of a step to
detached weights w[T]; the trainer's loss is sum(w * L). `present[T]` (bool)
says which tasks had at least one label in the batch: an absent task gets
weight 0 and its state must not move. All state lives in buffers or
parameters, so it follows `.to()` and lands in `state_dict()` and checkpoints.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class WeightingMethod(nn.Module):
    """Base class. Subclasses implement `compute(losses, present) -> weights`."""

    #: config name, set by `@register_weighting("name")`
    name: ClassVar[str] = ""
    #: True if the method wants the same batch's losses re-evaluated after the optimizer step
    #: (FAMO); the trainer then calls `post_step(losses_after, present)` with no method branches.
    needs_post_step_losses: ClassVar[bool] = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be an integer >= 1, got {num_tasks!r}")
        self.num_tasks = num_tasks

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        losses = losses.detach()
        if present is None:
            present = torch.ones_like(losses, dtype=torch.bool)
        return self.compute(losses, present).detach()

    def compute(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def post_step(self, losses_after: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Losses of the same batch after the optimizer step; only called if needs_post_step_losses."""

    def tracking_state(self) -> dict[str, torch.Tensor]:
        """Per-task tensors worth tracking besides the weights (e.g. GO4Align's group ids)."""
        return {}


_REGISTRY: dict[str, type[WeightingMethod]] = {}


def register_weighting(name: str):
    def decorator(cls: type[WeightingMethod]) -> type[WeightingMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"weighting method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def weighting_methods() -> dict[str, type[WeightingMethod]]:
    return dict(_REGISTRY)


def build_weighting(name: str, num_tasks: int, **kwargs: Any) -> WeightingMethod:
    """Construct a registered method from its config name and keyword arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown weighting method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](num_tasks=num_tasks, **kwargs)
