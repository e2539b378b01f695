"""Masked per-task binary cross-entropy over all heads at once.

L_t = sum_b mask[b,t] * w[b,t] * bce(logit[b,t], y[b,t]) / max(count_t, 1),
count_t = sum_b mask[b,t]. A task with no label in the batch gets L_t = 0 and
present_t = False: a defined value, never NaN, and no gradient.
"""

from __future__ import annotations

import torch

from recsys_mtl.losses.tasks import TaskLosses, masked_task_loss, masked_task_loss_sums


def masked_bce_sums(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task sums of masked (weighted) BCE and label counts, both [T]: the fused loss with every task binary.

    Sums and counts (rather than means) are what ranks all-reduce, so that a
    multi-process step sees exactly the loss of the whole global batch.
    """
    return masked_task_loss_sums(logits, labels, mask, None, weights)


def masked_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> TaskLosses:
    """L[T] = masked mean BCE per task; 0 for tasks with no label in the batch."""
    return masked_task_loss(logits, labels, mask, None, weights)
