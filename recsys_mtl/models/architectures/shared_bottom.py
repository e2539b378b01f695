"""Shared-bottom (Caruana 1997): one MLP shared by all tasks, then the task towers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsys_mtl.models.architectures.registry import register_architecture
from recsys_mtl.models.layers import MLP


@register_architecture("shared_bottom")
class SharedBottom(nn.Module):
    """Shared-bottom MLP feeding every task tower: the simplest, fewest parameters."""

    def __init__(self, in_dim: int, num_tasks: int, *, hidden: Sequence[int] = (256, 128), dropout: float = 0.0) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.bottom = MLP(in_dim, list(hidden), dropout)
        self.out_dim = self.bottom.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bottom(x)
        return h.unsqueeze(1).expand(-1, self.num_tasks, -1)
