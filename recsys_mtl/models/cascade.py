"""Task cascades (ESMM, Ma et al. SIGIR 2018): derived product tasks computed from the heads' logits.

A child head (`depends_on: parent`) predicts p(child | parent); its derived product task predicts

    p(parent and child) = p(root) * ... * p(parent | ...) * p(child | parent),

log p = sum of logsigmoid(head logits) along the chain (one matmul with a fixed [D, H] 0/1 path matrix: no loop over
tasks), and its logit log p - log(1 - p), with log(1 - p) = log(-expm1(log p)). A BCE on that logit is -log p or
-log(1 - p): the product's loss computed from the heads' logits, so any architecture and any weighting trains it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def product_logits(head_logits: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """[B, H] head logits, [D, H] 0/1 paths -> [B, D] logits of the products of each path's head probabilities."""
    log_p = F.logsigmoid(head_logits) @ paths.to(head_logits.dtype).T
    # p < 1 strictly, so log(1 - p) is finite (every head saturated at p = 1 would give -inf)
    log_p = log_p.clamp(max=-torch.finfo(log_p.dtype).tiny)
    return log_p - torch.log(-torch.expm1(log_p))


class TaskCascade(nn.Module):
    """Appends the derived tasks' logits to the heads': [B, H] -> [B, H + D]."""

    def __init__(self, head_names: list[str], paths: dict[str, list[str]],
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        index = {name: h for h, name in enumerate(head_names)}
        matrix = torch.zeros(len(paths), len(head_names), device=device)
        for d, chain in enumerate(paths.values()):
            matrix[d, [index[name] for name in chain]] = 1.0
        self.register_buffer("paths", matrix, persistent=False)  # from the spec: not part of a checkpoint

    def forward(self, head_logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([head_logits, product_logits(head_logits, self.paths)], dim=1)


__all__ = ["TaskCascade", "product_logits"]
