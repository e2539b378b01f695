"""GO4Align's whole weighting step as one Triton program (one launch, one program instance), T <= 256.

The torch path (go4align.py + kmeans1d.py) launches dozens of tiny kernels per step (sort,
prefix sums, k DP steps, backtracking, gathers); on a GPU their launch latency is the cost, not
the arithmetic. Here every vector of the step lives in the registers of one program:

- indicator: the mode's scale x smoothness, masked to the present tasks;
- sort: rank by comparison (a [T, T] tile of "j sorts before i", ties by task index, as a stable
  sort), and the sorted values by a one-hot [T, T] reduction; no gather, no scatter;
- prefix sums of the centred sorted values (tl.cumsum), then the exact DP of kmeans1d.py with
  the segment costs as a [T, T] tile and one min/argmin over it per extra group;
- backtracking from the argmin table (a [K, T] tile), labels as "number of group starts at or
  before the task's rank", group centres by a one-hot [T, K] reduction;
- the state update (in place) and the weights.

Both modes of go4align.py: `paper` (go4align_paper_kernel) and `rec` (go4align_rec_kernel, with
or without label statistics).

Only this module imports triton; the launch, as a torch custom op, and the choice of path live in
go4align_fused.py. Tests run these kernels in Triton's interpreter on the CPU (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import triton
import triton.language as tl

from recsys_mtl.weighting.go4align_fused import MAX_FUSED_TASKS


@triton.jit
def _kmeans_1d_weights(x, valid, n, kk, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """Exact 1-D K-means of x over `valid` (min(kk, n) groups) -> (label int32, -1 if invalid; group centre per task).

    The same DP and tie-breaking as kmeans1d.py: stable order (ties by index), first argmin.
    """
    idx = tl.arange(0, BLOCK_T)
    key = tl.where(valid, x, float("inf"))  # invalid entries and padding sort last, by index
    # rank_i = #{j : j sorts before i}; ties (and the +inf of invalid/padding) keep index order
    before = (key[:, None] < key[None, :]) | ((key[:, None] == key[None, :]) & (idx[:, None] < idx[None, :]))
    rank = tl.sum(before.to(tl.int32), axis=0)  # indexed by i (axis 1)
    x0 = tl.where(valid, x, 0.0)
    mean = tl.sum(x0, axis=0) / tl.maximum(n, 1).to(tl.float32)
    centred = tl.where(valid, x - mean, 0.0)
    # value at sorted position p: the task whose rank is p (a one-hot reduction instead of a gather)
    xs = tl.sum(tl.where(rank[None, :] == idx[:, None], centred[None, :], 0.0), axis=1)
    c1 = tl.cumsum(xs, axis=0)  # c1[i'] = sum of the first i'+1 sorted points (inclusive)
    c2 = tl.cumsum(xs * xs, axis=0)

    # Shifted DP of kmeans1d.py: E_j[i'] = D[j, i'+1]; a group starting at point a'+1 and ending
    # at point i' (inclusive) costs SSE = (c2[i']-c2[a']) - (c1[i']-c1[a'])^2 / (i'-a'), for a' < i'.
    length = (idx[None, :] - idx[:, None]).to(tl.float32)  # rows a', columns i'
    seg1 = c1[None, :] - c1[:, None]
    seg2 = c2[None, :] - c2[:, None]
    cost = tl.where(idx[None, :] > idx[:, None], tl.maximum(seg2 - seg1 * seg1 / tl.maximum(length, 1.0), 0.0),
                    float("inf"))
    best = tl.maximum(c2 - c1 * c1 / (idx + 1).to(tl.float32), 0.0)  # E_1: one group over the first i'+1 points
    rows_k = tl.arange(0, BLOCK_K)
    back = tl.zeros((BLOCK_K, BLOCK_T), dtype=tl.int32)  # back[j-1, i']: start of the last group (row 0: 0)
    for j in range(1, kk):
        best, arg = tl.min(best[:, None] + cost, axis=0, return_indices=True, return_indices_tie_break_left=True)
        back = tl.where(rows_k[:, None] == j, (arg + 1)[None, :], back)

    # Backtrack from (jstar, n) with jstar = min(kk, n) groups; rows above jstar leave `end` at n.
    jstar = tl.minimum(n, kk)
    end = n
    starts = tl.full((BLOCK_K,), BLOCK_T + 1, dtype=tl.int32)  # an unused group starts past every point
    for step in range(0, kk):
        j = kk - step
        a = tl.sum(tl.where((rows_k[:, None] == j - 1) & (idx[None, :] == end - 1), back, 0))
        used = j <= jstar
        end = tl.where(used, a, end)
        starts = tl.where((rows_k == j - 1) & used, a, starts)
    label = tl.sum((starts[None, :] <= rank[:, None]).to(tl.int32), axis=1) - 1
    label = tl.where(valid, label, -1)
    member = (label[:, None] == rows_k[None, :]) & valid[:, None]  # [T, K] one-hot of the groups
    sums = tl.sum(tl.where(member, x0[:, None], 0.0), axis=0)
    counts = tl.sum(member.to(tl.float32), axis=0)
    centres = sums / tl.maximum(counts, 1.0)
    centre = tl.sum(tl.where(member, centres[None, :], 0.0), axis=1)
    return label, centre


@triton.jit
def go4align_paper_kernel(losses_ptr, present_ptr, cum_loss_ptr, group_ptr, gamma_ptr, weights_ptr,
                          num_tasks, kk, beta, min_loss,
                          BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """`paper` mode (go4align.py): gamma = (sum L / L) * softmax(-beta * cumulative L), weights = group centres."""
    idx = tl.arange(0, BLOCK_T)
    inside = idx < num_tasks
    present = tl.load(present_ptr + idx, mask=inside, other=0) != 0
    loss = tl.load(losses_ptr + idx, mask=inside, other=0.0).to(tl.float32)
    loss = tl.where(present, loss, 0.0)
    present = present & (loss > min_loss)  # the L_m = 0 guard: no signal, left out this step
    loss = tl.where(present, loss, 0.0)
    scale = tl.sum(loss, axis=0) / tl.maximum(loss, 1e-12)
    cum = tl.load(cum_loss_ptr + idx, mask=inside, other=0.0) + loss  # absent tasks add 0
    tl.store(cum_loss_ptr + idx, cum, mask=inside)
    z = tl.where(inside, -beta * cum, float("-inf"))
    z = z - tl.max(z, axis=0)
    smooth = tl.exp(z - tl.log(tl.sum(tl.exp(z), axis=0)))  # exp(log_softmax), as the torch path
    gamma = tl.where(present, scale * smooth, 0.0)
    n = tl.sum(present.to(tl.int32), axis=0)
    label, centre = _kmeans_1d_weights(gamma, present, n, kk, BLOCK_T, BLOCK_K)
    tl.store(gamma_ptr + idx, gamma, mask=inside)
    tl.store(group_ptr + idx, label.to(tl.int64), mask=inside)
    tl.store(weights_ptr + idx, tl.where(present, centre, 0.0), mask=inside)


@triton.jit
def _log1p(x):
    # log(1 + x) accurate for small x (Goldberg's trick): triton.language has no log1p
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _constant_predictor_loss(count, mean, m2, binary):
    """go4align.constant_predictor_loss: H(mean) for binary tasks, m2 / count otherwise."""
    n = tl.maximum(count, 1.0)
    eps = 0.5 / (n + 1.0)
    p = tl.minimum(tl.maximum(mean, eps), 1.0 - eps)
    entropy = -(p * tl.log(p) + (1.0 - p) * _log1p(-p))
    return tl.where(binary, entropy, tl.maximum(m2 / n, 0.0))


@triton.jit
def _lower_median(x, valid, BLOCK_T: tl.constexpr):
    """The floor((n-1)/2)-th smallest valid entry (+inf when none is valid), as go4align.lower_median."""
    idx = tl.arange(0, BLOCK_T)
    key = tl.where(valid, x, float("inf"))
    before = (key[:, None] < key[None, :]) | ((key[:, None] == key[None, :]) & (idx[:, None] < idx[None, :]))
    rank = tl.sum(before.to(tl.int32), axis=0)
    n = tl.sum(valid.to(tl.int32), axis=0)
    pick = (rank == tl.maximum(n - 1, 0) // 2) & valid
    return tl.where(n > 0, tl.sum(tl.where(pick, x, 0.0), axis=0), float("inf"))


@triton.jit
def go4align_rec_kernel(losses_ptr, present_ptr, count_ptr, total_ptr, total_sq_ptr, binary_ptr,
                        risk_avg_ptr, risk_updates_ptr, cum_risk_ptr, label_count_ptr, label_mean_ptr, label_m2_ptr,
                        prior_ptr, risk_ptr, group_ptr, gamma_ptr, weights_ptr,
                        num_tasks, kk, beta, alpha, ema_decay, one_minus_decay, max_ratio, risk_floor,
                        HAS_STATS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """`rec` mode (go4align.py): lagged EMA risks from the constant predictor's loss, gamma = (P * Q)^alpha
    relative to the median task, group centres bounded by max_ratio x the median, mean 1 over present tasks."""
    idx = tl.arange(0, BLOCK_T)
    inside = idx < num_tasks
    present = tl.load(present_ptr + idx, mask=inside, other=0) != 0
    loss = tl.where(present, tl.load(losses_ptr + idx, mask=inside, other=0.0).to(tl.float32), 0.0)
    risk_avg = tl.load(risk_avg_ptr + idx, mask=inside, other=0.0)
    updates = tl.load(risk_updates_ptr + idx, mask=inside, other=0.0)
    label_count = tl.load(label_count_ptr + idx, mask=inside, other=0.0)
    prior = tl.load(prior_ptr + idx, mask=inside, other=0.0)

    # starting risk e0: from the labels before this step; a task's first labels are this batch's
    has_prior = label_count > 0
    prior_now = prior
    if HAS_STATS:
        batch_count = tl.load(count_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        batch_total = tl.load(total_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        batch_sq = tl.load(total_sq_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        binary = tl.load(binary_ptr + idx, mask=inside, other=0) != 0
        batch_mean = batch_total / tl.maximum(batch_count, 1.0)
        batch_m2 = tl.maximum(batch_sq - batch_total * batch_mean, 0.0)
        first = (label_count <= 0) & (batch_count > 0)
        prior_now = tl.where(first, _constant_predictor_loss(batch_count, batch_mean, batch_m2, binary), prior)
        has_prior = has_prior | first

    # lagged risk: the EMA of the losses before this step, started at e0
    decay_n = tl.where(updates == 0, 1.0, tl.exp(updates * tl.log(ema_decay)))  # ema_decay ** updates
    debiased = risk_avg / tl.maximum(1.0 - decay_n, 1e-12)
    start = tl.where(has_prior, prior_now, tl.where(updates > 0, debiased, loss))
    risk = tl.where(present, risk_avg + decay_n * start, 0.0)

    floored = tl.maximum(risk, risk_floor)
    cum_risk = tl.load(cum_risk_ptr + idx, mask=inside, other=0.0) + risk  # absent tasks add 0
    log_scale = tl.log(tl.maximum(tl.sum(tl.where(present, floored, 0.0), axis=0), 1e-12)) - tl.log(floored)
    z = tl.where(inside, -beta * cum_risk, float("-inf"))
    z = z - tl.max(z, axis=0)
    log_gamma = alpha * (log_scale + (z - tl.log(tl.sum(tl.exp(z), axis=0))))
    gamma = tl.where(present, tl.exp(log_gamma - _lower_median(log_gamma, present, BLOCK_T)), 0.0)
    n = tl.sum(present.to(tl.int32), axis=0)
    label, centre = _kmeans_1d_weights(gamma, present, n, kk, BLOCK_T, BLOCK_K)
    weights = tl.where(present, centre, 0.0)
    weights = tl.minimum(weights, max_ratio * _lower_median(weights, present, BLOCK_T))
    weights = weights * (n.to(tl.float32) / tl.maximum(tl.sum(weights, axis=0), 1e-12))

    # then the state takes this step's losses and labels (absent tasks: unchanged)
    tl.store(cum_risk_ptr + idx, cum_risk, mask=inside)
    tl.store(risk_avg_ptr + idx, tl.where(present, ema_decay * risk_avg + one_minus_decay * loss, risk_avg),
             mask=inside)
    tl.store(risk_updates_ptr + idx, updates + present.to(tl.float32), mask=inside)
    if HAS_STATS:
        label_mean = tl.load(label_mean_ptr + idx, mask=inside, other=0.0)
        label_m2 = tl.load(label_m2_ptr + idx, mask=inside, other=0.0)
        merged = label_count + batch_count
        frac = batch_count / tl.maximum(merged, 1.0)
        delta = batch_mean - label_mean
        label_m2 = label_m2 + (batch_m2 + delta * delta * label_count * frac)
        label_mean = label_mean + delta * frac
        tl.store(label_m2_ptr + idx, label_m2, mask=inside)
        tl.store(label_mean_ptr + idx, label_mean, mask=inside)
        tl.store(label_count_ptr + idx, merged, mask=inside)
        refreshed = _constant_predictor_loss(merged, label_mean, label_m2, binary)
        tl.store(prior_ptr + idx, tl.where(batch_count > 0, refreshed, prior), mask=inside)
    tl.store(risk_ptr + idx, risk, mask=inside)
    tl.store(gamma_ptr + idx, gamma, mask=inside)
    tl.store(group_ptr + idx, label.to(tl.int64), mask=inside)
    tl.store(weights_ptr + idx, weights, mask=inside)


def block_sizes(num_tasks: int, num_groups: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_K, num_warps) for T tasks and K groups."""
    if not 1 <= num_tasks <= MAX_FUSED_TASKS:
        raise ValueError(f"fused GO4Align step: num_tasks must be in [1, {MAX_FUSED_TASKS}], got {num_tasks}")
    block_t = max(16, triton.next_power_of_2(num_tasks))
    block_k = max(2, triton.next_power_of_2(min(num_groups, num_tasks)))
    return block_t, block_k, 8 if block_t >= 128 else 4
