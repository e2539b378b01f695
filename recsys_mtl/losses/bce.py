"""Masked per-task binary cross-entropy over all heads at once.

L_t = sum_b mask[b,t] * w[b,t] * bce(logit[b,t], y[b,t]) / max(count_t, 1),
count_t = sum_b mask[b,t]. A task with no label in the batch gets L_t = 0 and
present_t = False: a defined value, never NaN, and no gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class TaskLosses(NamedTuple):
    losses: torch.Tensor  # [T] mean masked loss per task (0 where absent)
    present: torch.Tensor  # [T] bool, the task has at least one label


def masked_bce_sums(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task sums of masked (weighted) BCE and label counts, both [T].

    Sums and counts (rather than means) are what ranks all-reduce, so that a
    multi-process step sees exactly the loss of the whole global batch.
    """
    if logits.shape != labels.shape or mask.shape != labels.shape:
        raise ValueError(
            f"masked_bce: logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and "
            f"mask {tuple(mask.shape)} must all be [B, T]"
        )
    # an unlabelled row's label and weight may be anything (NaN where an upstream job computed no value): zero
    # them before use, since the backward of x * w is w * grad, and 0 * NaN would put NaN in the logits' gradient
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    per_row = F.binary_cross_entropy_with_logits(logits, torch.where(mask, labels.to(logits.dtype), zero),
                                                 reduction="none")
    if weights is not None:
        per_row = per_row * torch.where(mask, weights.to(logits.dtype), zero)
    # where, not multiply: an inf/NaN logit on an unlabelled row must not leak into the task's loss
    sums = torch.where(mask, per_row, torch.zeros_like(per_row)).sum(dim=0)
    counts = mask.sum(dim=0).to(logits.dtype)
    return sums, counts


def masked_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> TaskLosses:
    """L[T] = masked mean BCE per task; 0 for tasks with no label in the batch."""
    sums, counts = masked_bce_sums(logits, labels, mask, weights)
    return TaskLosses(sums / counts.clamp(min=1.0), counts > 0)
