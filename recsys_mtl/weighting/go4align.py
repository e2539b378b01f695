"""GO4Align: group optimisation for multi-task alignment, in two modes.

Shen et al., "GO4Align: Group Optimization for Multi-Task Alignment", NeurIPS 2024
(arXiv:2404.06486). Both modes build an indicator gamma = scale * smoothness per task,
group the tasks by exact 1-D K-means of gamma (kmeans1d.py) and give each task its
group's centre. ARCHITECTURE.md "GO4Align: two modes"; docs/weighting.md says when to use which.

mode "paper": the official code, exactly. With L the detached losses of the present tasks at step t:

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
Loss scaling: P is scale-invariant, Q = softmax(-beta * c * C) is not (unless beta = 0).

Why paper mode fails on rare binary tasks: a weight proportional to 1 / L_m of the batch it
multiplies makes each step follow grad L_m / L_m = grad log L_m, so training minimises
E_batch[log L_m]; a batch without a positive has L ~ p, and log p -> -inf as p -> 0, so
predicting 0 is the optimum. Measured (issue 26): base rate 0.095% at batch 2048 (1.9 expected
positives), weights of 15,000 on positive-free batches against 22 otherwise, and the mean
prediction fell to 0.008 of the base rate within 200 steps. `check_task_rates` warns for
every binary task with fewer than 5 expected positives (or negatives) per global batch.

mode "rec" (default): the paper's balancing of loss scales without the feedback loop.

    e_m      risk: an EMA of the task's loss (decay `ema_decay`), started at the loss of the best
             constant predictor (H(base rate) for a binary task, the label variance for a
             regression one) from the running all-reduced label statistics (`LabelStats`):
             e = sum_s (1-d) d^(n-s) L_s + d^n * e0, with e0 refreshed as the statistics grow
    lag      step t's weights use the risks of steps < t; then the risks take step t's losses,
             so a weight never depends on the batch it multiplies
    P_m      = sum_j e_j / max(e_m, min_loss)      over the present tasks (no division by e0:
                                                   that cancels the balancing, measured worse)
    log Q    = log_softmax(-beta * C), C = sum of the risks e used at each step (the paper's, on e)
    gamma_m  = (P_m * Q_m) ** alpha                alpha 1 = the paper's balancing, 0 = equal weights;
                                                   (softmax)^alpha is the softmax at alpha * beta
    groups   exact 1-D K-means of gamma, w_m = its group's centre
    w        normalised to mean 1 over the present tasks, then bounded to [median / max_ratio,
             max_ratio x median] (the lower median weight; renormalised where the floor moved a weight)

Why a floor as well as a cap: the smoothness term grows with the run. With risks 3.0 (a regression head) and
0.05-0.6 (binary heads), alpha 0.25, beta 1e-3 and every task its own group, the regression head's weight
was 0.29 at 1k steps, 0.019 at 5k, 6e-4 at 10k and 5e-7 at 20k: a production-length run would stop training
it. K-means groups usually hide this (the head shares a centre), but nothing else guarantees it; the floor
does. It never bound in the validation runs at the defaults (results/weighting/README.md).

Absent tasks get weight 0 and their state (risk, cumulative risk, label statistics) does not
move. The first time a task is labelled, its starting risk comes from that batch's labels
(there are no earlier ones); without label statistics at all (label_stats=None, e.g. driven by
hand) its first step uses its own loss as the starting risk, the one step where a weight sees
its batch. gamma is computed in log space and divided by its median (K-means is scale-free), so
no weight over- or underflows at long runs. Loss scaling: with beta = 0 the weights are
scale-invariant.

The rec defaults were chosen on validation splits only (issue 26, item 3; docs/weighting.md and
results/weighting/README.md hold the tables): one setting at a time around them on KuaiRand (7 binary tasks,
3 seeds), KuaiRand + play_time_ms (mixed, 3 seeds) and a synthetic mixed set (48 binary + 16 regression, 2 seeds).
- alpha 0.25: against equal +0.12% / -0.20% / -0.06% on the three sets; alpha 0.5 +0.22 / +0.05 / -0.10%,
  alpha 1 +0.64 / +0.28 / -0.09%. Less balancing was better on the KuaiRand sets, no difference on synthetic.
- beta 1e-3: 1e-2 read -0.76% on mixed KuaiRand by cutting the play-time head to 0.03 of the median weight
  late in the run (an early stop for a head that overfits; +0.18% on binary KuaiRand); that effect grows with
  the run length, so it is not a default, and the floor above now stops it below median / max_ratio.
  With risks 0.3 apart, Q's ratio is exp(-alpha * beta * 0.3 * t) = 0.93 at 1k steps and 0.47 at 10k (the
  paper's 1e-4 is inert there).
- ema_decay 0.99, max_ratio 10 and K = ceil(sqrt(T / 2)) (the k ~ sqrt(n/2) rule: 2 groups for 3-8 tasks, 4 for
  32, 6 for 64): the alternatives were within about 2 seed-stds on every set. K = 1 is equal weighting exactly.

Checkpoints and configs from before the modes: a config without `mode` now means rec (the new
default). Paper mode's state is `cum_loss` alone, as before, and its model signature is the
plain method name "go4align", so an older checkpoint resumes or warm-starts with
`weighting.args.mode: paper`; rec mode's signature is "go4align (mode: rec)", so resuming an
older checkpoint without naming the mode is refused with that difference in the message
instead of loading paper state into rec mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from recsys_mtl.weighting.base import LabelStats, WeightingMethod, check_number, register_weighting
from recsys_mtl.weighting.go4align_fused import fused_step_applies, go4align_paper_step, go4align_rec_step
from recsys_mtl.weighting.kmeans1d import kmeans_1d_exact

#: guard for L_m = 0 in P_m = sum(L) / L_m
LOSS_EPS = 1e-12
MODES = ("rec", "paper")
#: rec-mode defaults, chosen on validation splits (issue 26, item 3; see the module docstring)
REC_DEFAULTS = {"alpha": 0.25, "ema_decay": 0.99, "max_ratio": 10.0}
PAPER_BETA = 1e-4  # the paper's and the official code's
REC_BETA = 1e-3
#: paper mode warns for a binary task with fewer expected positives (or negatives) per global batch
MIN_EXPECTED_POSITIVES = 5.0


def default_num_groups(num_tasks: int) -> int:
    """K = ceil(sqrt(T / 2)), the k ~ sqrt(n/2) rule of thumb (K in 1..16 was within noise on validation)."""
    return max(1, math.ceil(math.sqrt(num_tasks / 2)))


def constant_predictor_loss(count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor,
                            binary: torch.Tensor) -> torch.Tensor:
    """Loss of the best constant prediction: H(mean) in nats for binary tasks, m2 / count (the label
    variance) otherwise. The rate is kept half a label away from 0 and 1, so a batch without a
    positive gives a small positive entropy, not 0."""
    n = count.clamp_min(1)
    eps = 0.5 / (n + 1)
    p = torch.minimum(torch.maximum(mean, eps), 1 - eps)
    entropy = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
    return torch.where(binary, entropy, (m2 / n).clamp_min(0))


def lower_median(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The floor((n-1)/2)-th smallest valid entry (+inf when none is valid); no host sync."""
    ordered, _ = torch.sort(torch.where(valid, x, torch.full_like(x, float("inf"))))
    index = (valid.sum() - 1).clamp_min(0) // 2
    return ordered.gather(0, index.view(1)).squeeze(0)


@register_weighting("go4align")
class GO4Align(WeightingMethod):
    """GO4Align task weights: group centres of gamma = scale * smoothness (see the module docstring).

    Args:
        num_tasks: T.
        num_groups: K (>= 1; K >= T gives every present task its own gamma); default ceil(sqrt(T / 2)).
        beta: smoothness temperature (>= 0); default 1e-4 in paper mode (the paper's), 1e-3 in rec mode.
        mode: "rec" (default) or "paper" (the official code, exactly).
        alpha: rec only, in [0, 1]: gamma = (P * Q) ** alpha (default 0.25).
        ema_decay: rec only, in [0, 1): decay of the risk's moving average (default 0.99).
        max_ratio: rec only, >= 1: bound on largest weight / median weight and on median / smallest
            (default 10).
        min_loss: paper: a present task with loss <= min_loss is left out like an absent task; rec: the
            floor of a risk in the scale (>= 0, default 1e-6).

    Buffers. Paper: `cum_loss` (T,) cumulative loss. Rec: `risk_avg` (the decayed sum of losses),
    `risk_updates` (steps each task was labelled), `cum_risk`, and the running label statistics
    `label_count`, `label_mean`, `label_m2` with `prior` (the constant predictor's loss from them).
    Tracking only: `group` (-1 for absent tasks), `gamma` (rec: relative to the median task) and, in
    rec mode, `risk` (the risks the latest weights used).

    On CUDA (T <= 256, float32 state, triton installed) the whole step is one Triton program
    (go4align_triton.py); `use_fused_kernel` on an instance: None (default) there, False never
    (the torch path), True also on the CPU under Triton's interpreter (tests).
    """

    when_to_use = "Many heads whose losses differ in scale (binary + regression). `mode: rec` (default) is lagged and bounded; `mode: paper` is the official code and collapses rare binary tasks."
    #: where to take the fused Triton step (go4align_fused.fused_step_applies)
    use_fused_kernel: bool | None = None

    def __init__(self, num_tasks: int, num_groups: int | None = None, beta: float | None = None, mode: str = "rec",
                 alpha: float | None = None, ema_decay: float | None = None, max_ratio: float | None = None,
                 min_loss: float = 1e-6) -> None:
        super().__init__(num_tasks)
        if mode not in MODES:
            raise ValueError(f"GO4Align: mode must be 'rec' or 'paper', got {mode!r}")
        self.mode = mode
        if num_groups is None:
            num_groups = default_num_groups(num_tasks)
        if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
            raise ValueError(f"GO4Align: num_groups must be an integer >= 1, got {num_groups!r}")
        self.num_groups = num_groups
        self.beta = check_number("GO4Align", "beta", (PAPER_BETA if mode == "paper" else REC_BETA) if beta is None
                                 else beta, low=0.0)
        self.min_loss = check_number("GO4Align", "min_loss", min_loss, low=0.0)
        rec_args = {"alpha": alpha, "ema_decay": ema_decay, "max_ratio": max_ratio}
        if mode == "paper":
            given = [k for k, v in rec_args.items() if v is not None]
            if given:
                raise ValueError(f"GO4Align: {given[0]} applies to mode 'rec' only (mode 'paper' is the official "
                                 "code and has no such setting); remove it or set mode: rec")
            self.register_buffer("cum_loss", torch.zeros(num_tasks))
        else:
            rec_args = {k: REC_DEFAULTS[k] if v is None else v for k, v in rec_args.items()}
            self.alpha = check_number("GO4Align", "alpha", rec_args["alpha"], low=0.0, high=1.0)
            self.ema_decay = check_number("GO4Align", "ema_decay", rec_args["ema_decay"], low=0.0, high=1.0,
                                          high_inclusive=False)
            self.max_ratio = check_number("GO4Align", "max_ratio", rec_args["max_ratio"], low=1.0)
            for name in ("risk_avg", "risk_updates", "cum_risk", "label_count", "label_mean", "label_m2", "prior"):
                self.register_buffer(name, torch.zeros(num_tasks))
            self.register_buffer("risk", torch.zeros(num_tasks), persistent=False)
        self.register_buffer("group", torch.full((num_tasks,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("gamma", torch.zeros(num_tasks), persistent=False)

    @classmethod
    def state_signature(cls, args: dict[str, Any]) -> str:
        # paper keeps the name older checkpoints were signed with; rec's state means something else
        mode = args.get("mode", "rec")
        return cls.name if mode == "paper" else f"{cls.name} (mode: {mode})"

    def extra_repr(self) -> str:
        common = f"num_tasks={self.num_tasks}, mode={self.mode}, num_groups={self.num_groups}, beta={self.beta}"
        if self.mode == "paper":
            return f"{common}, min_loss={self.min_loss}"
        return (f"{common}, alpha={self.alpha}, ema_decay={self.ema_decay}, max_ratio={self.max_ratio}, "
                f"min_loss={self.min_loss}")

    def compute(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        if self.mode == "paper":
            return self._paper(losses, present)
        return self._rec(losses, present, label_stats)

    def _fused(self, losses: torch.Tensor, state: torch.Tensor) -> bool:
        return self.use_fused_kernel is not False and fused_step_applies(losses, state, self.num_tasks,
                                                                         on_cpu=bool(self.use_fused_kernel))

    def _paper(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if self._fused(losses, self.cum_loss):
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

    def _rec(self, losses: torch.Tensor, present: torch.Tensor, label_stats: LabelStats | None = None) -> torch.Tensor:
        if self._fused(losses, self.risk_avg):
            stats = (None,) * 4 if label_stats is None else tuple(label_stats)
            weights = go4align_rec_step(losses, present, *stats, self.risk_avg, self.risk_updates, self.cum_risk,
                                        self.label_count, self.label_mean, self.label_m2, self.prior, self.risk,
                                        self.group, self.gamma, self.num_groups, self.beta, self.alpha,
                                        self.ema_decay, self.max_ratio, max(self.min_loss, LOSS_EPS))
            return self._floor(weights, present).to(losses.dtype)
        dt = self.risk_avg.dtype
        zero = torch.zeros_like(self.risk_avg)
        loss = torch.where(present, losses.to(dt), zero)  # an absent task's loss may be NaN (0/0)

        # starting risk e0: from the labels before this step; a task's first labels are this batch's
        has_prior = self.label_count > 0
        prior = self.prior
        if label_stats is not None:
            batch_count = label_stats.count.to(dt)
            batch_total, batch_sq = label_stats.total.to(dt), label_stats.total_sq.to(dt)
            batch_mean = batch_total / batch_count.clamp_min(1)
            batch_m2 = (batch_sq - batch_total * batch_mean).clamp_min(0)
            binary = label_stats.binary.to(torch.bool)
            first = ~has_prior & (batch_count > 0)
            prior = torch.where(first, constant_predictor_loss(batch_count, batch_mean, batch_m2, binary), prior)
            has_prior = has_prior | first

        # lagged risk: the EMA of the losses before this step, started at e0
        updates = self.risk_updates
        decay_n = torch.full_like(updates, self.ema_decay).pow(updates)
        debiased = self.risk_avg / (1 - decay_n).clamp_min(LOSS_EPS)  # no e0: the EMA of what was seen
        start = torch.where(has_prior, prior, torch.where(updates > 0, debiased, loss))
        risk = torch.where(present, self.risk_avg + decay_n * start, zero)

        floored = risk.clamp_min(max(self.min_loss, LOSS_EPS))
        cum_risk = self.cum_risk + risk  # risk is 0 for absent tasks: their C does not move
        log_scale = torch.log(torch.where(present, floored, zero).sum().clamp_min(LOSS_EPS)) - torch.log(floored)
        log_gamma = self.alpha * (log_scale + torch.log_softmax(-self.beta * cum_risk, dim=0))
        # divided by the median task's gamma (K-means is scale-free): no over- or underflow at long runs
        gamma = torch.where(present, torch.exp(log_gamma - lower_median(log_gamma, present)), zero)
        labels, centers = kmeans_1d_exact(gamma, present, self.num_groups)
        weights = torch.where(present, centers.gather(0, labels.clamp_min(0)), zero)
        weights = torch.minimum(weights, self.max_ratio * lower_median(weights, present))
        weights = weights * (present.sum().to(dt) / weights.sum().clamp_min(LOSS_EPS))

        # then the state takes this step's losses and labels (absent tasks: unchanged)
        self.cum_risk.copy_(cum_risk)
        self.risk_avg.copy_(torch.where(present, self.ema_decay * self.risk_avg + (1 - self.ema_decay) * loss,
                                        self.risk_avg))
        self.risk_updates.add_(present.to(dt))
        if label_stats is not None:
            self._merge_label_stats(batch_count, batch_mean, batch_m2, binary)
        self.risk.copy_(risk)
        self.group.copy_(labels)
        self.gamma.copy_(gamma)
        return self._floor(weights, present).to(losses.dtype)

    def _floor(self, weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Present weights of mean 1 (largest <= max_ratio x median) raised to at least median / max_ratio and
        renormalised to mean 1 (both bounds are ratios to the median, which neither step moves); bit for bit
        the same weights where no weight was below the floor. No host sync."""
        floor = lower_median(weights, present) / self.max_ratio
        low = present & (weights < floor)
        raised = torch.where(low, floor, weights)
        renormalised = raised * (present.sum().to(raised.dtype) / raised.sum().clamp_min(LOSS_EPS))
        return torch.where(low.any(), renormalised, weights)

    def _merge_label_stats(self, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor,
                           binary: torch.Tensor) -> None:
        """Chan et al.'s pairwise merge of (count, mean, M2): stable in float32 for labels far from 0.
        A batch without labels of a task (count 0) leaves it exactly as it was."""
        total = self.label_count + count
        frac = count / total.clamp_min(1)
        delta = mean - self.label_mean
        self.label_m2.add_(m2 + delta * delta * self.label_count * frac)
        self.label_mean.add_(delta * frac)
        self.label_count.copy_(total)
        refreshed = constant_predictor_loss(self.label_count, self.label_mean, self.label_m2, binary)
        self.prior.copy_(torch.where(count > 0, refreshed, self.prior))

    def check_task_rates(self, names: Sequence[str], base_rates: Any, labels_per_batch: Any,
                         task_types: Sequence[str] | None = None) -> list[str]:
        """Paper mode: one warning per binary task with fewer than 5 expected positives (or negatives, for a
        rate above 1/2) per global batch, where the E[log L] collapse starts (module docstring)."""
        if self.mode != "paper":
            return []
        rates = torch.as_tensor(base_rates, dtype=torch.float64).reshape(-1).tolist()
        rows = torch.as_tensor(labels_per_batch, dtype=torch.float64).expand(len(rates)).tolist()
        types = list(task_types) if task_types is not None else ["binary"] * len(rates)
        out = []
        for name, rate, n, kind in zip(names, rates, rows, types):
            rare = min(rate, 1.0 - rate)
            expected = rare * n
            if kind == "binary" and expected < MIN_EXPECTED_POSITIVES:
                what = "positives" if rate <= 0.5 else "negatives"
                out.append(f"GO4Align mode paper: task {name!r} expects {expected:.3g} {what} per global batch "
                           f"(base rate {rate:.3g} x {n:.0f} labelled rows), below {MIN_EXPECTED_POSITIVES:g}: paper "
                           "mode weights each step by 1 / that batch's loss and can drive this head to predict "
                           f"{'0' if rate <= 0.5 else '1'} (docs/weighting.md); use mode: rec or a larger batch")
        return out

    def tracking_state(self) -> dict[str, torch.Tensor]:
        state = {"group": self.group, "gamma": self.gamma}
        if self.mode == "rec":
            state["risk"] = self.risk
        return state

    def summary(self) -> dict[str, torch.Tensor]:
        out = super().summary()
        out["num_groups"] = (self.group.view(-1, 1) == torch.arange(self.num_groups, device=self.group.device)).any(0).sum()
        return out
