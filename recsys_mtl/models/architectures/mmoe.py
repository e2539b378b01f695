"""MMoE (Ma et al., KDD 2018): E shared experts, one softmax gate per task.

h_t = sum_e softmax(x W_t)_e * expert_e(x). Experts run as one batched MLP and
all T gates as one linear layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsys_mtl.models.architectures.registry import register_architecture
from recsys_mtl.models.layers import BatchedMLP, gate_softmax


@register_architecture("mmoe")
class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al. 2018): shared experts, one softmax gate per task."""

    def __init__(self, in_dim: int, num_tasks: int, *, num_experts: int = 4, expert_hidden: Sequence[int] = (128, 64),
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_tasks = num_tasks
        self.num_experts = num_experts
        self.experts = BatchedMLP(num_experts, in_dim, list(expert_hidden), dropout)
        self.gates = nn.Linear(in_dim, num_tasks * num_experts)
        self.out_dim = self.experts.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = self.experts(x)  # [B, E, H]
        gates = gate_softmax(self.gates(x).view(-1, self.num_tasks, self.num_experts))  # [B, T, E]
        return torch.bmm(gates, experts)  # [B, T, H]
