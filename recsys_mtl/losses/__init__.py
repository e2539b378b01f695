"""Task losses: one fused op for all heads, L[T] from logits[B, T]."""

from recsys_mtl.losses.bce import TaskLosses, masked_bce, masked_bce_sums

__all__ = ["TaskLosses", "masked_bce", "masked_bce_sums"]
