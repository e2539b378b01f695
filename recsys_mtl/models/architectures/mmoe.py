"""MMoE (Ma et al., KDD 2018): E shared experts, one softmax gate per task.

h_t = sum_e softmax(x W_t)_e * expert_e(x). Experts run as one batched MLP and
all T gates as one linear layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recsys_mtl.models.layers import BatchedMLP

if TYPE_CHECKING:  # models take the config's values; only config/ imports the registry
    from recsys_mtl.config.train import ModelConfig


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al. 2018): shared experts, one softmax gate per task."""

    def __init__(self, in_dim: int, num_tasks: int, config: ModelConfig) -> None:
        super().__init__()
        cfg = config.mmoe
        self.num_tasks = num_tasks
        self.num_experts = cfg.num_experts
        self.experts = BatchedMLP(cfg.num_experts, in_dim, cfg.expert_hidden, config.dropout)
        self.gates = nn.Linear(in_dim, num_tasks * cfg.num_experts)
        self.out_dim = self.experts.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = self.experts(x)  # [B, E, H]
        gates = self.gates(x).view(-1, self.num_tasks, self.num_experts).softmax(dim=-1)  # [B, T, E]
        return torch.bmm(gates, experts)  # [B, T, H]
