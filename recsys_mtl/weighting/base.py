"""The task-weighting plug-in API: one nn.Module per method, one registry.

A method maps the (all-reduced, detached) per-task losses L[T] of a step to
detached weights w[T]; the trainer's loss is sum(w * L). It may also read
`label_stats`, the moments of the global batch's labels (`LabelStats`; GO4Align's
rec mode starts its risks at the loss of the best constant predictor); None
(benchmarks, hand-driven use) must keep working. `present[T]` (bool)
says which tasks had at least one label in the batch: an absent task gets
weight 0 and its state must not move. All state lives in buffers or
parameters, so it follows `.to()` and lands in `state_dict()` and checkpoints.

No method may synchronise with the host in `forward`/`post_step` (no `.item()`,
`nonzero`, boolean-mask indexing, Python branches on tensor values): the step
compiles under torch.compile(fullgraph=True) and can be captured in a CUDA graph.

Trainer contract (no method-specific branches):

    w = weighting(losses.detach(), present, label_stats)   # global losses, presence, label moments: same on every rank
    loss = (w * losses).sum()
    loss.backward(); optimizer.step()
    if weighting.needs_post_step_losses:             # class attribute, known at build time
        with torch.no_grad():
            losses_after = <same batch's per-task losses, re-evaluated with the updated model,
                            all-reduced like `losses`>
        weighting.post_step(losses_after, present)

Global losses: every rank must pass the same L and `present`, or ranks diverge. With every
task present on every rank, all_reduce(L, AVG) is enough; with label masks, prefer
L = all_reduce(sum of per-sample losses, SUM) / all_reduce(label count, SUM) and
present = label count > 0 (an AVG of per-rank means is biased when a task is missing on
some ranks). `needs_post_step_losses` is a class attribute: a trainer that cannot afford a
second forward can reject such methods at build time, never inside the step.

For tracking: `last_weights` / `last_present` hold the latest step's weights and
presence mask, `tracking_state()` adds method-specific per-task tensors and
`summary()` a few scalars; all are tensors, read them at logging time only.

`check_task_rates(names, base_rates, labels_per_batch)` is called once before training with the
estimated base rates; it returns warnings (strings) for the trainer to log, none by default.
A method written against the older `compute(losses, present)` (no `label_stats`) still works:
the base class sees its signature at class creation and leaves the argument out.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from recsys_mtl.config.loader import as_number


class LabelStats(NamedTuple):
    """Masked moments of the global batch's labels (all-reduced like the losses), each [T].

    Labels are in the space the loss sees (a regression task's clipped, transformed label).
    The best constant predictor's loss is H(total / count) for a binary task (cross-entropy,
    nats) and total_sq / count - (total / count)^2 (the label variance) for a regression task.
    """

    count: torch.Tensor  # labelled rows per task
    total: torch.Tensor  # sum of the labels
    total_sq: torch.Tensor  # sum of the squared labels
    binary: torch.Tensor  # bool: the task is binary (else regression)


class WeightingMethod(nn.Module):
    """Base class. Subclasses implement `compute(losses, present, label_stats) -> weights`."""

    #: config name, set by `@register_weighting("name")`
    name: ClassVar[str] = ""
    #: one line for the README's plug-in table: when to reach for this method
    when_to_use: ClassVar[str] = ""
    #: True if the method wants the same batch's losses re-evaluated after the optimizer step
    #: (FAMO); the trainer then calls `post_step(losses_after, present)` with no method branches.
    needs_post_step_losses: ClassVar[bool] = False
    #: False for a subclass whose `compute` predates `label_stats` (set from its signature)
    _compute_takes_label_stats: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = list(inspect.signature(cls.compute).parameters.values())
        cls._compute_takes_label_stats = len(params) >= 4 or any(p.kind == p.VAR_POSITIONAL for p in params)

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be an integer >= 1, got {num_tasks!r}")
        self.num_tasks = num_tasks
        # latest step's output for tracking; not persistent, so checkpoints do not depend on it
        self.register_buffer("last_weights", torch.zeros(num_tasks), persistent=False)
        self.register_buffer("last_present", torch.zeros(num_tasks, dtype=torch.bool), persistent=False)

    def forward(self, losses: torch.Tensor, present: torch.Tensor | None = None,
                label_stats: LabelStats | None = None) -> torch.Tensor:
        losses = losses.detach()
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"{type(self).__name__}: losses must have shape ({self.num_tasks},), got {tuple(losses.shape)}")
        if present is None:
            present = torch.ones_like(losses, dtype=torch.bool)
        elif present.shape != (self.num_tasks,):
            raise ValueError(f"{type(self).__name__}: present must have shape ({self.num_tasks},), got {tuple(present.shape)}")
        present = present.to(device=losses.device, dtype=torch.bool)
        if label_stats is not None:
            bad = [f for f, v in zip(LabelStats._fields, label_stats) if tuple(v.shape) != (self.num_tasks,)]
            if bad:
                raise ValueError(f"{type(self).__name__}: label_stats.{bad[0]} must have shape ({self.num_tasks},)")
        if self._compute_takes_label_stats:
            weights = self.compute(losses, present, label_stats).detach()
        else:
            weights = self.compute(losses, present).detach()
        self.last_weights.copy_(weights)
        self.last_present.copy_(present)
        return weights

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        raise NotImplementedError

    def check_task_rates(self, names: Sequence[str], base_rates: Any, labels_per_batch: Any,
                         task_types: Sequence[str] | None = None) -> list[str]:
        """Warnings about the tasks' base rates, logged before training (none by default).

        names[T]; base_rates[T]: estimated label means; labels_per_batch: labelled rows of a task per
        global batch (a number or [T]); task_types[T]: "binary" / "regression" (None: all binary).
        """
        return []

    @classmethod
    def state_signature(cls, args: dict[str, Any]) -> str:
        """What a checkpoint's weighting state must match to load (the model signature's `weighting`):
        the method name, unless the arguments change what the state means (GO4Align's mode)."""
        return cls.name

    def post_step(self, losses_after: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Losses of the same batch after the optimizer step; only called if needs_post_step_losses."""

    def tracking_state(self) -> dict[str, torch.Tensor]:
        """Per-task tensors worth tracking besides the weights (e.g. GO4Align's group ids)."""
        return {}

    def summary(self) -> dict[str, torch.Tensor]:
        """Scalar tensors describing the latest step (no host sync; convert at logging time).

        `min_weight` / `max_weight` are over the tasks present in the latest step
        (+inf / -inf when none was), `num_present` counts them.
        """
        w, p = self.last_weights, self.last_present
        inf = torch.full_like(w, float("inf"))
        return {
            "min_weight": torch.where(p, w, inf).min(),
            "max_weight": torch.where(p, w, -inf).max(),
            "num_present": p.sum(),
        }


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


def weighting_signature(name: str, args: dict[str, Any]) -> str:
    """The model signature's `weighting` entry for a configured method (see `state_signature`)."""
    cls = _REGISTRY.get(name)
    return name if cls is None else cls.state_signature(dict(args))


def build_weighting(name: str, num_tasks: int, /, **kwargs: Any) -> WeightingMethod:
    """Construct a registered method from its config name and keyword arguments."""
    check_weighting_args(name, kwargs)
    return _REGISTRY[name](num_tasks=num_tasks, **kwargs)


def check_weighting_args(name: str, kwargs: dict[str, Any], *, require_all: bool = True) -> None:
    """ValueError unless `name` is registered and `kwargs` are arguments its constructor takes (names only: the
    values are checked when it is built); with `require_all`, also unless every required argument is given."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown weighting method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    if "num_tasks" in kwargs:
        raise ValueError(f"weighting method {name!r}: num_tasks is not an argument (it is the number of tasks in "
                         "the feature spec); remove it")
    params = {p.name: p for p in list(inspect.signature(cls.__init__).parameters.values())[1:] if p.name != "num_tasks"}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"weighting method {name!r}: unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(params) or 'none'}")
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty and p not in kwargs]
    if missing and require_all:
        raise ValueError(f"weighting method {name!r}: missing required argument(s) {', '.join(missing)}")


def check_number(owner: str, name: str, value: Any, *, low: float | None = None, low_inclusive: bool = True,
                 high: float | None = None, high_inclusive: bool = True) -> float:
    """Validate a real hyperparameter; the message names the owner, the argument, the value and the allowed range."""
    lo = "" if low is None else ("[" if low_inclusive else "(") + f"{low}"
    hi = "" if high is None else f"{high}" + ("]" if high_inclusive else ")")
    allowed = f"a finite number in {lo or '(-inf'}, {hi or 'inf)'}"
    value = as_number(value)  # `beta: 1e-4` in YAML arrives as the string '1e-4'
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")
    return float(value)
