"""GO4Align: group optimisation for multi-task alignment.

Shen et al., "GO4Align: Group Optimization for Multi-Task Alignment", NeurIPS 2024
(arXiv:2404.06486). With L the detached losses of the present tasks at step t:

    P_m     = sum_j L_j / max(L_m, eps)                        scale (sum, as the official code)
    log Q_t = log_softmax(-beta * C_t),  C_t = sum_{s<=t} L_s   smoothness, Q_0 = 1/M, kept in log space
    gamma_m = P_m * Q_m                                        indicator
    groups  = exact 1-D K-means of gamma into K groups          (kmeans1d.py)
    w_m     = mean gamma of task m's group                      no renormalisation

A task without labels in the batch is left out of that step: it gets weight 0,
takes no part in the sum of P or the grouping, and its cumulative loss C does not
move. The same holds for a task whose loss is at most `min_loss` (default 1e-6):
that is the guard for L_m = 0. Clamping L_m instead (the first version used
1e-12) lets a rare task whose float32 BCE underflows to 0 on a batch without
positives reach P ~ 5e11, and the K-means centre spreads that weight over its
whole group: on 64 synthetic tasks every task diverged (+22% NE vs equal). The softmax of Q runs over all T tasks (so Q_0 = 1/T and the recurrence
Q_t = normalize(Q_{t-1} * exp(-beta * L_t)) holds with L_t = 0 for absent tasks).

Loss scaling: multiplying every loss by c leaves P unchanged (scale-invariant),
but Q = softmax(-beta * c * C) is not, so the weights change unless beta = 0.
Losses are expected to be non-negative (log losses are). With min_loss = 0, L_m = 0 is clamped to 1e-12.
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import WeightingMethod, check_number, register_weighting
from recsys_mtl.weighting.go4align_fused import fused_step_applies, go4align_paper_step
from recsys_mtl.weighting.kmeans1d import kmeans_1d_exact

#: guard for L_m = 0 in P_m = sum(L) / L_m
LOSS_EPS = 1e-12


@register_weighting("go4align")
class GO4Align(WeightingMethod):
    """GO4Align task weights: group centres of gamma = scale * smoothness.

    Args:
        num_tasks: T.
        num_groups: K, the number of groups (>= 1; K >= T gives every present task its own gamma).
        beta: smoothness temperature (>= 0, default 1e-4); small for long runs, since Q is cumulative.
        min_loss: a present task with loss <= min_loss carries no signal this step and is left out
            like an absent task (>= 0, default 1e-6).

    Buffers: `cum_loss` (T,) cumulative loss per task (persistent); `group` (T,) the
    latest group ids, -1 for absent tasks, and `gamma` (T,) the latest indicator (tracking only).

    On CUDA (T <= 256, float32 state, triton installed) the whole step is one Triton program
    (go4align_triton.py); `use_fused_kernel` on an instance: None (default) there, False never
    (the torch path), True also on the CPU under Triton's interpreter (tests).
    """

    #: where to take the fused Triton step (go4align_fused.fused_step_applies)
    use_fused_kernel: bool | None = None

    def __init__(self, num_tasks: int, num_groups: int, beta: float = 1e-4, min_loss: float = 1e-6) -> None:
        super().__init__(num_tasks)
        if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
            raise ValueError(f"GO4Align: num_groups must be an integer >= 1, got {num_groups!r}")
        self.num_groups = num_groups
        self.beta = check_number("GO4Align", "beta", beta, low=0.0)
        self.min_loss = check_number("GO4Align", "min_loss", min_loss, low=0.0)
        self.register_buffer("cum_loss", torch.zeros(num_tasks))
        self.register_buffer("group", torch.full((num_tasks,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("gamma", torch.zeros(num_tasks), persistent=False)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, num_groups={self.num_groups}, beta={self.beta}, min_loss={self.min_loss}"

    def compute(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if self.use_fused_kernel is not False and fused_step_applies(losses, self.cum_loss, self.num_tasks,
                                                                     on_cpu=bool(self.use_fused_kernel)):
            weights = go4align_paper_step(losses, present, self.cum_loss, self.group, self.gamma,
                                          self.num_groups, self.beta, self.min_loss)
            return weights.to(losses.dtype)
        dt = self.cum_loss.dtype
        loss = torch.where(present, losses.to(dt), torch.zeros((), dtype=dt, device=losses.device))
        present = present & (loss > self.min_loss)  # the L_m = 0 guard: no signal, left out this step
        loss = torch.where(present, loss, torch.zeros_like(loss))
        scale = loss.sum() / loss.clamp_min(LOSS_EPS)
        self.cum_loss.add_(loss)  # absent tasks add 0: their state does not move
        smooth = torch.exp(torch.log_softmax(-self.beta * self.cum_loss, dim=0))
        gamma = torch.where(present, scale * smooth, torch.zeros_like(scale))
        labels, centers = kmeans_1d_exact(gamma, present, self.num_groups)
        weights = torch.where(present, centers.gather(0, labels.clamp_min(0)), torch.zeros_like(gamma))
        self.group.copy_(labels)
        self.gamma.copy_(gamma)
        return weights.to(losses.dtype)

    def tracking_state(self) -> dict[str, torch.Tensor]:
        return {"group": self.group, "gamma": self.gamma}

    def summary(self) -> dict[str, torch.Tensor]:
        out = super().summary()
        out["num_groups"] = (self.group.view(-1, 1) == torch.arange(self.num_groups, device=self.group.device)).any(0).sum()
        return out
