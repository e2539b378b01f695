"""One fused, masked loss for a mix of binary and regression heads, and what each head's output means.

Per element (b, t), chosen by the task's kind without a loop over tasks:

    binary:            bce(logit, y)
    regression, mse:   (logit - y)^2
    regression, huber: 0.5 e^2 if |e| <= delta else delta (|e| - 0.5 delta),   e = logit - y

A regression head's output is its prediction of the transformed label; a binary head's is a logit.
Masking: per-task sums and counts over labelled rows (what ranks all-reduce); an unlabelled row adds nothing.
`losses/bce.py` keeps the all-binary names (`masked_bce`, `masked_bce_sums`) as calls of this op.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class TaskLosses(NamedTuple):
    losses: torch.Tensor  # [T] mean masked loss per task (0 where absent)
    present: torch.Tensor  # [T] bool, the task has at least one label


class TaskKinds(NamedTuple):
    """Per-task constants of the loss, built once from the spec: [T] each."""

    regression: torch.Tensor  # bool
    huber: torch.Tensor  # bool (regression tasks with loss huber)
    delta: torch.Tensor  # float, huber's delta (1 elsewhere)

    @classmethod
    def from_spec(cls, spec, device: torch.device | str | None = None) -> "TaskKinds":
        return cls.from_tasks(spec.tasks, device)

    @classmethod
    def from_tasks(cls, tasks, device: torch.device | str | None = None) -> "TaskKinds":
        """`tasks`: TaskSpec-like objects (is_regression, loss_name, delta)."""
        return cls(
            regression=torch.tensor([t.is_regression for t in tasks], dtype=torch.bool, device=device),
            huber=torch.tensor([t.loss_name == "huber" for t in tasks], dtype=torch.bool, device=device),
            delta=torch.tensor([float(t.delta) for t in tasks], dtype=torch.float32, device=device),
        )

    @classmethod
    def all_binary(cls, num_tasks: int, device: torch.device | str | None = None) -> "TaskKinds":
        false = torch.zeros(num_tasks, dtype=torch.bool, device=device)
        return cls(regression=false, huber=false.clone(), delta=torch.ones(num_tasks, device=device))

    def to(self, device: torch.device | str) -> "TaskKinds":
        return TaskKinds(*(t.to(device) for t in self))


def task_predictions(logits: torch.Tensor, regression: torch.Tensor | None) -> torch.Tensor:
    """What the heads predict, [B, T]: sigmoid(logit) for binary tasks, the output itself for regression tasks
    (the transformed label). `regression`: [T] bool, or None when every task is binary."""
    if regression is None:
        return torch.sigmoid(logits)
    return torch.where(regression.to(logits.device), logits, torch.sigmoid(logits))


def masked_task_loss_sums(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    kinds: TaskKinds | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task sums of the masked (weighted) loss and label counts, both [T]; `kinds` None = all binary."""
    if logits.shape != labels.shape or mask.shape != labels.shape:
        raise ValueError(
            f"masked_task_loss: logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and "
            f"mask {tuple(mask.shape)} must all be [B, T]"
        )
    if kinds is not None and kinds.regression.shape != (logits.shape[1],):
        raise ValueError(f"masked_task_loss: task kinds for {tuple(kinds.regression.shape)} tasks, logits have "
                         f"{logits.shape[1]}")
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    # an unlabelled row's label may be anything (NaN where nothing was measured): zero it before use
    y = torch.where(mask, labels.to(logits.dtype), zero)
    per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if kinds is not None:
        regression = kinds.regression.to(logits.device)
        # the squared error's backward is 2e * grad: feed it only labelled regression elements (where's backward
        # gives the others an exact 0, where 0 * inf from an unlabelled row's infinite logit would be NaN)
        err = torch.where(mask & regression, logits, zero) - y
        abs_err = err.abs()
        delta = kinds.delta.to(device=logits.device, dtype=logits.dtype)
        capped = torch.minimum(abs_err, delta)
        huber = capped * (abs_err - 0.5 * capped)  # 0.5 e^2 inside delta, delta (|e| - delta / 2) outside
        regression_loss = torch.where(kinds.huber.to(logits.device), huber, err.square())
        per_row = torch.where(regression, regression_loss, per_row)
    if weights is not None:
        per_row = per_row * torch.where(mask, weights.to(logits.dtype), zero)
    # where, not multiply: an inf/NaN logit on an unlabelled row must not leak into the task's loss
    sums = torch.where(mask, per_row, torch.zeros_like(per_row)).sum(dim=0)
    counts = mask.sum(dim=0).to(logits.dtype)
    return sums, counts


def masked_task_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    kinds: TaskKinds | None = None,
    weights: torch.Tensor | None = None,
) -> TaskLosses:
    """L[T] = masked mean loss per task; 0 for tasks with no label in the batch."""
    sums, counts = masked_task_loss_sums(logits, labels, mask, kinds, weights)
    return TaskLosses(sums / counts.clamp(min=1.0), counts > 0)


__all__ = ["TaskKinds", "task_predictions", "masked_task_loss_sums", "masked_task_loss"]
