"""PLE (Tang et al., RecSys 2020): stacked CGC levels of task-specific and shared experts.

Level l: task t's gate mixes its own K experts and the S shared experts, fed
with task t's input; the shared gate (all but the last level) mixes every
expert, fed with the shared input. All T*K task experts run as one batched MLP.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsys_mtl.models.architectures.registry import register_architecture
from recsys_mtl.models.layers import BatchedLinear, BatchedMLP, gate_softmax


class CGCLevel(nn.Module):
    def __init__(self, in_dim: int, num_tasks: int, task_experts: int, shared_experts: int,
                 hidden: list[int], dropout: float, last: bool) -> None:
        super().__init__()
        self.num_tasks, self.k, self.s, self.last = num_tasks, task_experts, shared_experts, last
        self.task_experts = BatchedMLP(num_tasks * task_experts, in_dim, hidden, dropout)
        self.shared_experts = BatchedMLP(shared_experts, in_dim, hidden, dropout)
        self.task_gates = BatchedLinear(num_tasks, in_dim, task_experts + shared_experts)
        self.shared_gate = None if last else nn.Linear(in_dim, num_tasks * task_experts + shared_experts)
        self.out_dim = self.task_experts.out_dim

    def forward(self, task_in: torch.Tensor, shared_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = shared_in.shape[0]
        # task t's K experts all read task t's input
        per_expert_in = task_in.repeat_interleave(self.k, dim=1)  # [B, T*K, in]
        task_out = self.task_experts(per_expert_in)  # [B, T*K, H]
        shared_out = self.shared_experts(shared_in)  # [B, S, H]
        h = task_out.shape[-1]
        own = task_out.view(b, self.num_tasks, self.k, h)
        pool = torch.cat([own, shared_out.unsqueeze(1).expand(-1, self.num_tasks, -1, -1)], dim=2)  # [B,T,K+S,H]
        gates = gate_softmax(self.task_gates(task_in))  # [B, T, K+S]
        task_next = torch.einsum("btk,btkh->bth", gates, pool)
        if self.shared_gate is None:
            return task_next, shared_in
        everything = torch.cat([task_out, shared_out], dim=1)  # [B, T*K+S, H]
        shared_next = torch.einsum("be,beh->bh", gate_softmax(self.shared_gate(shared_in)), everything)
        return task_next, shared_next


@register_architecture("ple")
class PLE(nn.Module):
    """Progressive layered extraction (Tang et al. 2020): CGC levels of task-specific and shared experts."""

    def __init__(self, in_dim: int, num_tasks: int, *, levels: int = 2, shared_experts: int = 2, task_experts: int = 1,
                 expert_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("levels", levels), ("shared_experts", shared_experts), ("task_experts", task_experts)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_tasks = num_tasks
        num_levels, levels = levels, []
        for i in range(num_levels):
            level = CGCLevel(in_dim, num_tasks, task_experts, shared_experts, list(expert_hidden),
                             dropout, last=i == num_levels - 1)
            levels.append(level)
            in_dim = level.out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        task_in = x.unsqueeze(1).expand(-1, self.num_tasks, -1)
        shared_in = x
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return task_in
