"""The training batch: what the reader yields and the model consumes."""

from __future__ import annotations

import dataclasses

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclasses.dataclass
class Batch(Pipelineable):
    """One batch of B rows and T tasks.

    dense:          [B, D] float32, already transformed per the feature spec.
    sparse:         KeyedJaggedTensor with one key per sparse feature (spec order);
                    single-valued features have length 1 per row.
    labels:         [B, T] float32: 0/1 for binary tasks, the clipped and transformed label for regression
                    tasks; 0 where the label is missing.
    label_mask:     [B, T] bool, True where the row has a label for the task.
    sample_weights: [B, T] float32 or None (only when a task has a weight column).
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    label_mask: torch.Tensor
    sample_weights: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.labels.shape[1]

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            label_mask=self.label_mask.to(device=device, non_blocking=non_blocking),
            sample_weights=None
            if self.sample_weights is None
            else self.sample_weights.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)
        self.label_mask.record_stream(stream)
        if self.sample_weights is not None:
            self.sample_weights.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels=self.labels.pin_memory(),
            label_mask=self.label_mask.pin_memory(),
            sample_weights=None if self.sample_weights is None else self.sample_weights.pin_memory(),
        )


__all__ = ["Batch"]
