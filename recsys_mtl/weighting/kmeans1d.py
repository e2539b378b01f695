"""Exact, deterministic 1-D K-means on the device: sort, prefix sums, dynamic programming.

In one dimension an optimal K-means partition consists of runs of consecutive
values once the points are sorted, so the optimum is found exactly by a DP over
(number of clusters j, number of sorted points i):

    D[0, 0] = 0, D[0, i > 0] = inf
    D[j, i] = min_{a < i} D[j-1, a] + SSE(a, i)      SSE(a, i) = S2[i]-S2[a] - (S1[i]-S1[a])^2 / (i-a)

with S1, S2 the prefix sums of x and x^2 (centred first, against cancellation).
D[j, i] is inf whenever i < j, so every cluster is non-empty. With n valid
points, the answer uses exactly min(k, n) clusters (the optimal cost never rises
with more clusters); n is a tensor, so that row is picked with a gather, not in
Python. Invalid points sort after the valid ones and take no part. Cost
O(k * T^2) as k vectorised steps; no `.item()`, `nonzero`, boolean-mask indexing
or Python branch on tensor values, so it runs inside torch.compile(fullgraph=True)
and CUDA graphs. Ties are broken deterministically (stable sort, first argmin).
"""

from __future__ import annotations

import torch


def kmeans_1d_exact(x: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal 1-D K-means of the valid entries of `x`.

    Args:
        x: (T,) floating values; entries where `valid` is False are ignored (may be inf/nan).
        valid: (T,) bool.
        k: number of clusters (Python int >= 1). With n valid points, min(k, n) clusters are used.

    Returns:
        labels: (T,) int64 cluster id in [0, min(k, n)), clusters numbered by increasing centre;
            -1 for invalid entries.
        centers: (k,) mean of each cluster, in x's dtype; 0 for the k - min(k, n) unused clusters.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"kmeans_1d_exact: k must be an integer >= 1, got {k!r}")
    if x.dim() != 1 or valid.shape != x.shape:
        raise ValueError(f"kmeans_1d_exact: x and valid must be 1-D of the same shape, got {tuple(x.shape)} and {tuple(valid.shape)}")
    t = x.shape[0]
    kk = min(k, t)  # more DP rows than points can never be used
    dev, dt = x.device, x.dtype
    valid = valid.to(torch.bool)

    x0 = torch.where(valid, x, torch.zeros_like(x))
    n = valid.sum()
    mean = x0.sum() / n.clamp_min(1).to(dt)
    # invalid entries sort last: key +inf; stable sort keeps tie order deterministic
    key = torch.where(valid, x, torch.full_like(x, float("inf")))
    _, order = torch.sort(key, stable=True)
    xs = torch.where(valid, x - mean, torch.zeros_like(x)).gather(0, order)

    zero = xs.new_zeros(1)
    s1 = torch.cat([zero, torch.cumsum(xs, 0)])  # (T+1,)
    s2 = torch.cat([zero, torch.cumsum(xs * xs, 0)])
    idx = torch.arange(t + 1, device=dev)
    a_idx = idx.view(-1, 1)  # segment start a (rows)
    i_idx = idx.view(1, -1)  # segment end i (columns), points a..i-1
    length = (i_idx - a_idx).to(dt)
    seg1 = s1.view(1, -1) - s1.view(-1, 1)
    seg2 = s2.view(1, -1) - s2.view(-1, 1)
    inf = torch.full((), float("inf"), dtype=dt, device=dev)  # a fill, not a host-to-device copy
    cost = torch.where(i_idx > a_idx, (seg2 - seg1 * seg1 / length.clamp_min(1)).clamp_min(0), inf)  # (T+1, T+1)

    # D[1, i] = SSE(0, i); then k-1 min-plus steps. back[j-1, i]: start of the last cluster of the
    # best j-partition of the first i points (0 for j = 1), kept as kk rows of (T+1,).
    prev = cost[0]
    args = [torch.zeros(t + 1, dtype=torch.long, device=dev)]
    for _ in range(kk - 1):
        prev, arg = (prev.view(-1, 1) + cost).min(dim=0)
        args.append(arg)

    # Backtrack from (jstar, n), jstar = min(k, n) clusters used (0 when no point is valid).
    # Rows j > jstar are walked too but leave `end` at n, and their starts are masked below.
    jstar = n.clamp_max(kk)
    used = torch.arange(1, kk + 1, device=dev) <= jstar
    used_rows = used.view(-1, 1).unbind(0)
    end = n.view(1)
    starts = []
    for j in range(kk, 0, -1):
        a = args[j - 1].gather(0, end)
        end = torch.where(used_rows[j - 1], a, end)
        starts.append(a)
    starts_t = torch.where(used, torch.cat(starts[::-1]), t + 1)  # unused cluster: starts past every point
    pos = torch.arange(t, device=dev)
    label_sorted = (starts_t.view(1, -1) <= pos.view(-1, 1)).sum(1) - 1
    labels = torch.empty_like(label_sorted).scatter_(0, order, label_sorted)
    labels = torch.where(valid, labels, torch.full_like(labels, -1))

    onehot = (labels.view(-1, 1) == torch.arange(k, device=dev).view(1, -1)).to(dt)  # (T, k)
    sums = (onehot * x0.view(-1, 1)).sum(0)
    counts = onehot.sum(0)
    centers = sums / counts.clamp_min(1)
    return labels, centers
