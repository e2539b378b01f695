"""Task losses: one fused op for all heads, L[T] from logits[B, T]."""

from recsys_mtl.losses.bce import TaskLosses, masked_bce, masked_bce_sums
from recsys_mtl.losses.tasks import TaskKinds, masked_task_loss, masked_task_loss_sums, task_predictions

__all__ = ["TaskLosses", "TaskKinds", "masked_bce", "masked_bce_sums", "masked_task_loss", "masked_task_loss_sums",
           "task_predictions"]
