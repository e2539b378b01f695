"""Group DRO task weights (Sagawa, Koh, Hashimoto, Liang, ICLR 2020, arXiv:1911.08731),
online exponentiated-gradient ascent on the task distribution q:

    q_m <- q_m * exp(eta * L_m);  q <- q / sum(q);   loss = sum_m q_m L_m

kept in log space as log q = eta * (cumulative loss) (buffer `log_q`), updated with the
current losses first and then used, as the paper's Algorithm 1. Weights are q renormalised
over the present tasks (sum 1); absent tasks get 0 and their log q does not move.
Loss scaling: not invariant (multiplying the losses by c is the same as multiplying eta by c).
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, check_number, register_weighting


@register_weighting("group_dro")
class GroupDRO(WeightingMethod):
    """Args: num_tasks; step_size: eta (> 0, default 0.01)."""

    when_to_use = "Protect the worst task: exponentiated-gradient weight on the largest losses (Sagawa et al. 2020)."

    def __init__(self, num_tasks: int, step_size: float = 0.01) -> None:
        super().__init__(num_tasks)
        self.step_size = check_number("GroupDRO", "step_size", step_size, low=0.0, low_inclusive=False)
        self.register_buffer("log_q", torch.zeros(num_tasks))

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        dt = self.log_q.dtype
        self.log_q.add_(torch.where(present, self.step_size * losses.to(dt), torch.zeros((), dtype=dt, device=losses.device)))
        logits = torch.where(present, self.log_q, torch.full_like(self.log_q, float("-inf")))
        w = torch.softmax(logits, dim=0)
        return torch.where(present, w, torch.zeros_like(w)).to(losses.dtype)

    def tracking_state(self) -> dict[str, torch.Tensor]:
        return {"log_q": self.log_q}
