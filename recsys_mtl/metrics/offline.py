"""Exact offline metrics per task, and a paired bootstrap comparison of two models.

Inputs are `[N, T]` (rows x tasks): predictions are probabilities by default
(`from_logits=True` takes logits and uses softplus, which is exact near 0 and 1),
labels are 0/1 (any value where the mask is False is ignored), `mask` is bool
(True = labelled), `weights` is optional `[N]` or `[N, T]`. Every metric is
computed over labelled rows only and is vectorised across tasks.

- log loss  = sum(w * ll) / sum(w),  ll = -(y log p + (1 - y) log(1 - p))
- NE        = sum(w * ll) / (sum(w) * H(p_bar)),  p_bar = sum(w * y) / sum(w),
              H(p) = -(p log p + (1 - p) log(1 - p))   (He et al., 2014)
- AUC       = exact weighted Mann-Whitney statistic; tied scores count 1/2
- calibration = sum(w * p) / sum(w * y)

Regression tasks (`task_types`): predictions are the heads' outputs (the transformed label; `from_logits`
does not apply to them), labels the transformed labels, and per task

- MSE = sum(w (p - y)^2) / sum(w), RMSE = sqrt(MSE), MAE = sum(w |p - y|) / sum(w)
- NMSE = MSE / Var_w(y): 1 - R^2, the regression analogue of NE (a constant predictor at the mean scores 1)
- MAE_raw = MAE after undoing the label transform (`label_transforms`: expm1 for log1p) on both sides.

Each task has one normalized error (`TaskMetrics.normalized_error`): NE for binary tasks, NMSE for regression
tasks; `compare_models` compares models on it (its `*_ne*` fields hold it for every task).

A task with no labelled row, with only one class, or with a constant regression label gets NaN and a flag
(`"no_labels"`, `"single_class"`, `"constant_label"`) instead of an exception.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

#: probabilities are clipped to [EPS, 1 - EPS] before taking logs
EPS = 1e-7
#: one exact-AUC pass holds about this many (row, task) elements at once
_ELEMENTS_PER_CHUNK = 1 << 23

NO_LABELS = "no_labels"
SINGLE_CLASS = "single_class"
CONSTANT_LABEL = "constant_label"


# ---------------------------------------------------------------- input handling


def _as_2d(x, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape [N, T], got {tuple(t.shape)}")
    return t.to(dtype) if dtype is not None else t


def _regression_columns(task_types, T: int) -> torch.Tensor:
    """[T] bool from a sequence of "binary" / "regression" (None: all binary)."""
    if task_types is None:
        return torch.zeros(T, dtype=torch.bool)
    if len(task_types) != T:
        raise ValueError(f"task_types has {len(task_types)} entries for {T} task columns")
    unknown = sorted({t for t in task_types} - {"binary", "regression"})
    if unknown:
        raise ValueError(f"task_types: unknown type(s) {unknown}; expected 'binary' or 'regression'")
    return torch.tensor([t == "regression" for t in task_types], dtype=torch.bool)


def _log1p_columns(label_transforms, T: int) -> torch.Tensor:
    """[T] bool: the tasks whose label went through log1p (None: none)."""
    if label_transforms is None:
        return torch.zeros(T, dtype=torch.bool)
    if len(label_transforms) != T:
        raise ValueError(f"label_transforms has {len(label_transforms)} entries for {T} task columns")
    return torch.tensor([t == "log1p" for t in label_transforms], dtype=torch.bool)


def _prepare(predictions, labels, mask, weights, from_logits: bool, regression: torch.Tensor | None = None):
    """Validated float64 views: (per-element loss: log loss, or squared error for regression columns, prob (the
    value for regression columns), y, effective weight = w * mask, mask)."""
    pred = _as_2d(predictions, "predictions", torch.float64)
    y = _as_2d(labels, "labels", torch.float64)
    m = _as_2d(mask, "mask").to(torch.bool) if mask is not None else torch.ones_like(y, dtype=torch.bool)
    if pred.shape != y.shape or m.shape != y.shape:
        raise ValueError(
            f"predictions {tuple(pred.shape)}, labels {tuple(y.shape)} and mask {tuple(m.shape)} must have the same [N, T] shape"
        )
    regression = torch.zeros(y.shape[1], dtype=torch.bool) if regression is None else regression
    binary = ~regression
    bad = m & binary & (y != 0) & (y != 1)
    if bool(bad.any()):
        raise ValueError("labels must be 0 or 1 wherever mask is True (binary tasks; give task_types for regression tasks)")
    y = torch.where(m, y, torch.zeros_like(y))
    if weights is None:
        w = m.to(torch.float64)
    else:
        wt = torch.as_tensor(weights, dtype=torch.float64)
        if wt.dim() == 1:
            wt = wt[:, None]
        if wt.shape[0] != y.shape[0] or wt.shape[1] not in (1, y.shape[1]):
            raise ValueError(f"weights: expected shape [N] or [N, T] with N={y.shape[0]}, got {tuple(wt.shape)}")
        if bool((wt < 0).any()):
            raise ValueError("weights must be non-negative")
        w = torch.where(m, wt.expand_as(y), torch.zeros_like(y))
    if from_logits:
        ll = torch.nn.functional.softplus(pred) - y * pred
        prob = torch.sigmoid(pred)
    else:
        if bool((binary & ((pred < 0) | (pred > 1))).any()):
            raise ValueError("predictions must be probabilities in [0, 1] (pass from_logits=True for logits; "
                             "regression tasks' values need task_types)")
        prob = pred.clamp(EPS, 1 - EPS)
        ll = -(y * prob.log() + (1 - y) * torch.log1p(-prob))
    if bool(regression.any()):
        ll = torch.where(regression, (pred - y).square(), ll)
        prob = torch.where(regression, pred, prob)
    ll = torch.where(m, ll, torch.zeros_like(ll))
    return ll, prob, y, w, m


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in nats; 0 at p in {0, 1}."""
    q = 1 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q))


# ---------------------------------------------------------------- exact AUC


def _rank_pass(scores: torch.Tensor, pos_w: torch.Tensor, neg_w: torch.Tensor, labelled: torch.Tensor,
               bucket: torch.Tensor | None = None, n_buckets: int = 0, n_bins: int = 0):
    """One sort per task column: exact tie-aware AUC, and optionally per-bucket rank histograms.

    scores/pos_w/neg_w/labelled are [T, N] (tasks first). Tied scores form one group; a
    group's positives beat all negatives in earlier groups and half of those in their own.
    With `bucket` ([N] long), also returns pos/neg weight histograms [M, T, K] over K rank
    bins (a tie group never straddles bins), which the bootstrap resamples by bucket.
    """
    T, N = scores.shape
    s_sorted, order = torch.sort(scores, dim=1, stable=True)
    pw = pos_w.gather(1, order).reshape(-1)
    nw = neg_w.gather(1, order).reshape(-1)
    new_group = torch.ones(T, N, dtype=torch.bool)
    new_group[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]
    del s_sorted
    new_group = new_group.reshape(-1)
    gid = torch.cumsum(new_group, 0) - 1  # groups never cross tasks: each task's first element starts one
    n_groups = int(gid[-1]) + 1
    task_of_group = torch.arange(T).repeat_interleave(N)[new_group]
    first_group = gid[torch.arange(T) * N]
    gp = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, pw)
    gn = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, nw)
    before = torch.cumsum(gn, 0) - gn
    neg_before = before - before[first_group][task_of_group]
    numer = torch.zeros(T, dtype=torch.float64).index_add_(0, task_of_group, gp * (neg_before + 0.5 * gn))
    P = torch.zeros(T, dtype=torch.float64).index_add_(0, task_of_group, gp)
    Nn = torch.zeros(T, dtype=torch.float64).index_add_(0, task_of_group, gn)
    auc = numer / (P * Nn)
    if bucket is None:
        return auc, None, None
    # rank bin of a group = floor(labelled rows before it * K / labelled rows of the task)
    lab = labelled.gather(1, order).reshape(-1).to(torch.float64)
    gl = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, lab)
    lbefore = torch.cumsum(gl, 0) - gl
    lbefore = lbefore - lbefore[first_group][task_of_group]
    n_lab = torch.zeros(T, dtype=torch.float64).index_add_(0, task_of_group, gl).clamp_min(1)
    gbin = (lbefore * n_bins / n_lab[task_of_group]).floor().clamp_max(n_bins - 1).long()
    elem_bin = gbin[gid]
    elem_bucket = bucket[order.reshape(-1)]
    elem_task = torch.arange(T).repeat_interleave(N)
    flat = (elem_bucket * T + elem_task) * n_bins + elem_bin
    size = n_buckets * T * n_bins
    hp = torch.zeros(size, dtype=torch.float32).index_add_(0, flat, pw.float())
    hn = torch.zeros(size, dtype=torch.float32).index_add_(0, flat, nw.float())
    return auc, hp.view(n_buckets, T, n_bins), hn.view(n_buckets, T, n_bins)


def _column_slices(N: int, T: int) -> list[slice]:
    chunk = max(1, _ELEMENTS_PER_CHUNK // max(N, 1))
    return [slice(t0, min(T, t0 + chunk)) for t0 in range(0, T, chunk)]


def _slice_inputs(predictions, labels, mask, weights, sl: slice):
    """Column slice `sl` of the [N, T] inputs (weights may be [N]); no copy of the full arrays."""
    pred = _as_2d(predictions, "predictions")
    y = _as_2d(labels, "labels")
    if pred.shape != y.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(y.shape)} must have the same [N, T] shape")
    m = None if mask is None else _as_2d(mask, "mask")
    if m is not None and m.shape != y.shape:
        raise ValueError(f"mask {tuple(m.shape)} must have the labels' shape {tuple(y.shape)}")
    w = None
    if weights is not None:
        w = torch.as_tensor(weights)
        w = w if w.dim() == 1 or w.shape[1] == 1 else w[:, sl]
    return pred[:, sl], y[:, sl], (None if m is None else m[:, sl]), w


@dataclasses.dataclass
class _Stats:
    """Sufficient statistics of one model on a slice of tasks."""

    auc: torch.Tensor  # [t] exact
    W: torch.Tensor
    Y: torch.Tensor
    L: torch.Tensor  # weighted log loss (binary) or squared error (regression)
    Pp: torch.Tensor
    n: torch.Tensor
    Yy: torch.Tensor  # weighted squared labels (regression: the label variance)
    AE: torch.Tensor  # weighted absolute error, transformed and raw scale (regression)
    AE_raw: torch.Tensor
    regression: torch.Tensor  # [t] bool
    Sw: torch.Tensor | None = None  # [M, t] per-bucket sums
    Sy: torch.Tensor | None = None
    SL: torch.Tensor | None = None
    Syy: torch.Tensor | None = None
    hp: torch.Tensor | None = None  # [M, t, K]
    hn: torch.Tensor | None = None


def _stats(predictions, labels, mask, weights, from_logits: bool, sl: slice, bucket=None, M: int = 0, K: int = 0,
           regression: torch.Tensor | None = None, log1p: torch.Tensor | None = None) -> _Stats:
    pred, yy, mm, ww = _slice_inputs(predictions, labels, mask, weights, sl)
    reg = torch.zeros(pred.shape[1], dtype=torch.bool) if regression is None else regression[sl]
    ll, prob, y, w, m = _prepare(pred, yy, mm, ww, from_logits, reg)
    binary_w = torch.where(reg, torch.zeros_like(w), w)  # no AUC for regression columns (0/0 = NaN)
    auc, hp, hn = _rank_pass(pred.T.contiguous(), (binary_w * y).T.contiguous(), (binary_w * (1 - y)).T.contiguous(),
                             m.T.contiguous(), bucket, M, K)
    zeros = torch.zeros(pred.shape[1], dtype=torch.float64)
    Yy, AE, AE_raw = zeros, zeros, zeros
    if bool(reg.any()):
        value = torch.where(m, prob, torch.zeros_like(prob))
        raw = reg & (torch.zeros_like(reg) if log1p is None else log1p[sl])
        Yy = (w * y * y).sum(0)
        AE = (w * (value - y).abs()).sum(0)
        AE_raw = (w * (torch.where(raw, torch.expm1(value), value) - torch.where(raw, torch.expm1(y), y)).abs()).sum(0)
    st = _Stats(auc=auc, W=w.sum(0), Y=(w * y).sum(0), L=(w * ll).sum(0), Pp=(w * prob).sum(0), n=m.sum(0),
                Yy=Yy, AE=AE, AE_raw=AE_raw, regression=reg, hp=hp, hn=hn)
    if bucket is not None:
        def bucket_sums(x: torch.Tensor) -> torch.Tensor:  # [N, t] -> [M, t]
            return torch.zeros(M, x.shape[1], dtype=torch.float64).index_add_(0, bucket, x)

        st.Sw, st.Sy, st.SL, st.Syy = bucket_sums(w), bucket_sums(w * y), bucket_sums(w * ll), bucket_sums(w * y * y)
    return st


def _cat(parts: list[_Stats]) -> _Stats:
    def cat(name: str, dim: int):
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else torch.cat(vals, dim=dim)

    return _Stats(auc=cat("auc", 0), W=cat("W", 0), Y=cat("Y", 0), L=cat("L", 0), Pp=cat("Pp", 0), n=cat("n", 0),
                  Yy=cat("Yy", 0), AE=cat("AE", 0), AE_raw=cat("AE_raw", 0), regression=cat("regression", 0),
                  Sw=cat("Sw", 1), Sy=cat("Sy", 1), SL=cat("SL", 1), Syy=cat("Syy", 1), hp=cat("hp", 1),
                  hn=cat("hn", 1))


def _label_variance(W: torch.Tensor, Y: torch.Tensor, Yy: torch.Tensor) -> torch.Tensor:
    """Weighted variance of the label from its sums (0 where W = 0)."""
    W_safe = torch.where(W > 0, W, torch.ones_like(W))
    mean = Y / W_safe
    return (Yy / W_safe - mean * mean).clamp_min(0)


def _normalized_error(W: torch.Tensor, Y: torch.Tensor, L: torch.Tensor, Yy: torch.Tensor,
                      regression: torch.Tensor) -> torch.Tensor:
    """Per task: NE = (L / W) / H(Y / W) (binary), NMSE = (L / W) / Var(y) (regression); any leading dims."""
    baseline = torch.where(regression, _label_variance(W, Y, Yy), _entropy(Y / W))
    return (L / W) / baseline


def _auc_from_hist(hp: torch.Tensor, hn: torch.Tensor) -> torch.Tensor:
    """AUC from rank-bin histograms [..., K] (ties within a bin count 1/2)."""
    hp, hn = hp.double(), hn.double()
    before = torch.cumsum(hn, -1) - hn
    numer = (hp * (before + 0.5 * hn)).sum(-1)
    return numer / (hp.sum(-1) * hn.sum(-1))


# ---------------------------------------------------------------- per-task metrics


@dataclasses.dataclass
class TaskMetrics:
    """Per-task arrays of length T (NaN where undefined, or for the other task type; see `flag`)."""

    ne: np.ndarray
    auc: np.ndarray
    calibration: np.ndarray
    logloss: np.ndarray
    base_rate: np.ndarray  # the mean label: a binary task's base rate, a regression task's mean transformed label
    n_labelled: np.ndarray  # labelled rows
    weight_sum: np.ndarray  # sum of weights over labelled rows
    flag: list[str]  # "" when the task is well defined, else NO_LABELS, SINGLE_CLASS or CONSTANT_LABEL
    task_types: list[str] = dataclasses.field(default_factory=list)  # "binary" / "regression" per task
    nmse: np.ndarray | None = None  # regression tasks (NaN for binary ones)
    mse: np.ndarray | None = None
    rmse: np.ndarray | None = None
    mae: np.ndarray | None = None
    mae_raw: np.ndarray | None = None

    @property
    def normalized_error(self) -> np.ndarray:
        """[T]: NE of binary tasks, NMSE of regression tasks (lower is better)."""
        if self.nmse is None:
            return self.ne
        return np.where(np.array([t == "regression" for t in self.task_types], dtype=bool), self.nmse, self.ne)


def _summarise(st: _Stats) -> TaskMetrics:
    W, Y, L, Pp, n, auc, reg = st.W, st.Y, st.L, st.Pp, st.n, st.auc, st.regression
    variance = _label_variance(W, Y, st.Yy)
    W_safe = torch.where(W > 0, W, torch.ones_like(W))
    p_bar = Y / W_safe
    flags = []
    for t in range(len(W)):
        if int(n[t]) == 0 or float(W[t]) == 0.0:
            flags.append(NO_LABELS)
        elif bool(reg[t]):  # a variance at rounding level of the mean's square: one value
            flags.append(CONSTANT_LABEL if float(variance[t]) <= 1e-12 * max(1.0, float(p_bar[t]) ** 2) else "")
        elif float(Y[t]) == 0.0 or float(Y[t]) == float(W[t]):
            flags.append(SINGLE_CLASS)
        else:
            flags.append("")
    bad = torch.tensor([f != "" for f in flags], dtype=torch.bool)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    mean_loss = L / W_safe

    def only(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.where(rows, x, nan)

    ne = only(~bad & ~reg, mean_loss / torch.where(bad | reg, torch.ones_like(p_bar), _entropy(p_bar)))
    nmse = only(~bad & reg, mean_loss / torch.where(bad | ~reg, torch.ones_like(variance), variance))
    labelled_regression = reg & (W > 0)
    return TaskMetrics(
        ne=ne.numpy(), auc=only(~bad & ~reg, auc).numpy(),
        calibration=only(~reg & (Y > 0), Pp / torch.where(Y > 0, Y, torch.ones_like(Y))).numpy(),
        logloss=only(~reg & (W > 0), mean_loss).numpy(), base_rate=only(W > 0, p_bar).numpy(),
        n_labelled=n.numpy(), weight_sum=W.numpy(), flag=flags,
        task_types=["regression" if r else "binary" for r in reg.tolist()],
        nmse=nmse.numpy(), mse=only(labelled_regression, mean_loss).numpy(),
        rmse=only(labelled_regression, mean_loss.sqrt()).numpy(), mae=only(labelled_regression, st.AE / W_safe).numpy(),
        mae_raw=only(labelled_regression, st.AE_raw / W_safe).numpy(),
    )


def task_metrics(predictions, labels, mask=None, weights=None, *, from_logits: bool = False, task_types=None,
                 label_transforms=None) -> TaskMetrics:
    """Exact per-task metrics over labelled rows: NE, AUC, calibration and log loss of binary tasks; NMSE, MSE,
    RMSE, MAE and MAE_raw of regression tasks (`task_types`, None = all binary)."""
    N, T = _as_2d(labels, "labels").shape
    reg, log1p = _regression_columns(task_types, T), _log1p_columns(label_transforms, T)
    return _summarise(_cat([_stats(predictions, labels, mask, weights, from_logits, sl, regression=reg, log1p=log1p)
                            for sl in _column_slices(N, T)]))


def offline_ne(predictions, labels, mask=None, weights=None, *, from_logits: bool = False) -> np.ndarray:
    return task_metrics(predictions, labels, mask, weights, from_logits=from_logits).ne


def offline_auc(predictions, labels, mask=None, weights=None, *, from_logits: bool = False) -> np.ndarray:
    return task_metrics(predictions, labels, mask, weights, from_logits=from_logits).auc


# ---------------------------------------------------------------- paired bootstrap


@dataclasses.dataclass
class Comparison:
    """Candidate (b) minus baseline (a), per task, with percentile 95% CIs from a paired bootstrap.

    `*_ne*` fields are of each task's normalized error: NE for binary tasks, NMSE for regression tasks (whose
    AUC fields are NaN); the mean relative change is over all well-defined tasks, of both types."""

    delta_ne: np.ndarray
    delta_ne_ci: np.ndarray  # [T, 2]
    delta_auc: np.ndarray
    delta_auc_ci: np.ndarray  # [T, 2]
    rel_ne_change: np.ndarray  # NE_b / NE_a - 1
    rel_ne_change_ci: np.ndarray  # [T, 2]
    mean_rel_ne_change: float  # over well-defined tasks
    mean_rel_ne_change_ci: tuple[float, float]
    n_boot: int
    n_buckets: int
    seed: int
    task_types: list[str] = dataclasses.field(default_factory=list)
    #: how replicates resample the rows (the report's footer says it)
    resampling: str = "row buckets"


def compare_models(pred_a, pred_b, labels, mask=None, weights=None, *, n_boot: int = 200, seed: int = 0,
                   from_logits: bool = False, n_buckets: int = 256, n_rank_bins: int = 512, task_types=None,
                   label_transforms=None) -> Comparison:
    """Paired bootstrap over rows of (model b - model a) on the same eval rows.

    Rows are dealt at random into `n_buckets` equal buckets (every row its own bucket when
    N <= n_buckets), per-bucket sufficient statistics are built in one pass (sums for NE,
    rank-bin histograms for AUC), and each replicate draws multinomial bucket counts, so a
    replicate costs O(buckets x tasks x bins) instead of O(rows x tasks). Point estimates are
    exact; a CI is the exact estimate plus the 2.5/97.5 percentiles of (replicate - full-data
    value of the same statistic), which cancels the small bias of binned ranks.
    """
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    N, T = _as_2d(labels, "labels").shape
    M = max(1, min(n_buckets, N))
    K = n_rank_bins
    rng = np.random.default_rng(seed)
    bucket = torch.from_numpy(rng.permutation(N) % M).long()
    reg, log1p = _regression_columns(task_types, T), _log1p_columns(label_transforms, T)
    t0 = time.perf_counter()
    A = _cat([_stats(pred_a, labels, mask, weights, from_logits, sl, bucket, M, K, reg, log1p)
              for sl in _column_slices(N, T)])
    B = _cat([_stats(pred_b, labels, mask, weights, from_logits, sl, bucket, M, K, reg, log1p)
              for sl in _column_slices(N, T)])
    Sw, Sy, Syy, Sa, Sb = A.Sw, A.Sy, A.Syy, A.SL, B.SL
    hpa, hna, hpb, hnb = A.hp, A.hn, B.hp, B.hn

    t1 = time.perf_counter()
    counts = torch.from_numpy(rng.multinomial(M, np.full(M, 1.0 / M), size=n_boot)).double()  # [B, M]
    ones = torch.ones(1, M, dtype=torch.float64)

    def ne_of(c: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """The normalized error (NE or NMSE) of each task in each replicate."""
        return _normalized_error(c @ Sw, c @ Sy, c @ S, c @ Syy, reg)

    def auc_of(c: torch.Tensor, hp: torch.Tensor, hn: torch.Tensor) -> torch.Tensor:
        cf = c.float()
        return _auc_from_hist((cf @ hp.reshape(M, -1)).view(-1, T, K), (cf @ hn.reshape(M, -1)).view(-1, T, K))

    exact = _summarise(A)
    exact_b = _summarise(B)
    ne_a, ne_b = torch.from_numpy(exact.normalized_error), torch.from_numpy(exact_b.normalized_error)

    def ci(point: torch.Tensor, boot: torch.Tensor, full: torch.Tensor) -> np.ndarray:
        dev = (boot - full).numpy()
        with np.errstate(all="ignore"):
            lo, hi = np.nanpercentile(dev, [2.5, 97.5], axis=0) if dev.size else (np.nan, np.nan)
        return np.stack([point.numpy() + lo, point.numpy() + hi], axis=-1)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of degenerate tasks
        d_ne_boot = ne_of(counts, Sb) - ne_of(counts, Sa)
        d_ne_full = ne_of(ones, Sb) - ne_of(ones, Sa)
        rel_boot = ne_of(counts, Sb) / ne_of(counts, Sa) - 1
        rel_full = ne_of(ones, Sb) / ne_of(ones, Sa) - 1
        d_auc_boot = auc_of(counts, hpb, hnb) - auc_of(counts, hpa, hna)
        d_auc_full = auc_of(ones, hpb, hnb) - auc_of(ones, hpa, hna)

        delta_ne = ne_b - ne_a
        rel = ne_b / ne_a - 1
        delta_auc = torch.from_numpy(exact_b.auc - exact.auc)
        valid = torch.from_numpy(np.array([f == "" for f in exact.flag])) & torch.isfinite(rel)
        mean_rel = rel[valid].mean() if bool(valid.any()) else torch.tensor(float("nan"), dtype=torch.float64)
        # per replicate, the mean over the tasks it can score: a rare task with no positive in a replicate would
        # otherwise make the replicate NaN, and with several such tasks almost every replicate (CI NaN or biased)
        mean_ci = ci(mean_rel[None], torch.nanmean(rel_boot[:, valid], 1, keepdim=True),
                     torch.nanmean(rel_full[:, valid], 1, keepdim=True))[0]

        result = Comparison(
            delta_ne=delta_ne.numpy(), delta_ne_ci=ci(delta_ne, d_ne_boot, d_ne_full),
            delta_auc=delta_auc.numpy(), delta_auc_ci=ci(delta_auc, d_auc_boot, d_auc_full),
            rel_ne_change=rel.numpy(), rel_ne_change_ci=ci(rel, rel_boot, rel_full),
            mean_rel_ne_change=float(mean_rel), mean_rel_ne_change_ci=(float(mean_ci[0]), float(mean_ci[1])),
            n_boot=n_boot, n_buckets=M, seed=seed, task_types=exact.task_types,
        )
    log.debug("compare_models N=%d T=%d: exact passes with bucket stats %.2fs, %d replicates %.2fs",
              N, T, t1 - t0, n_boot, time.perf_counter() - t1)
    return result


# ---------------------------------------------------------------- report


def _fmt(x: float, spec: str) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


@dataclasses.dataclass
class EvalReport:
    """What `recsys-mtl evaluate` prints and logs: per-task metrics, optionally deltas vs a baseline."""

    task_names: list[str]
    metrics: TaskMetrics
    comparison: Comparison | None = None
    baseline: str | None = None  # e.g. the baseline run id
    gauc: np.ndarray | None = None  # [T] grouped AUC by `gauc_group` (recsys_mtl.metrics.grouped), if asked for
    gauc_group: str | None = None
    baseline_gauc: np.ndarray | None = None

    @property
    def task_types(self) -> list[str]:
        return self.metrics.task_types or ["binary"] * len(self.task_names)

    def to_metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Stable MLflow names (recsys_mtl.metrics.names): binary tasks eval/ne/<task>, eval/auc/<task>,
        eval/calibration/<task>, eval/logloss/<task>, eval/base_rate/<task>; regression tasks eval/nmse/<task>,
        eval/mse/<task>, eval/rmse/<task>, eval/mae/<task>, eval/mae_raw/<task>, eval/label_mean/<task>. With a
        baseline, per task eval/delta_<ne|nmse>/<task> and eval/rel_<ne|nmse>_change/<task> (its normalized error),
        eval/delta_auc/<task> (binary), and eval/mean_rel_ne_change: the mean relative change of the normalized
        errors over all tasks. NaN (degenerate, or the other task type) values are left out."""
        from recsys_mtl.metrics import names

        m = self.metrics
        out: dict[str, float] = {}
        cols = {names.NE: m.ne, names.AUC: m.auc, names.CALIBRATION: m.calibration, names.LOGLOSS: m.logloss}
        if names.REGRESSION in self.task_types:
            cols.update({names.NMSE: m.nmse, names.MSE: m.mse, names.RMSE: m.rmse, names.MAE: m.mae,
                         names.MAE_RAW: m.mae_raw})
        if self.gauc is not None:
            cols[names.GAUC] = self.gauc
        for metric, values in cols.items():
            for task, v in zip(self.task_names, values):
                if np.isfinite(v):
                    out[f"{prefix}/{metric}/{task}"] = float(v)
        for task, kind, v in zip(self.task_names, self.task_types, m.base_rate):
            if np.isfinite(v):
                out[f"{prefix}/{names.BASE_RATE if kind == names.BINARY else names.LABEL_MEAN}/{task}"] = float(v)
        c = self.comparison
        if c is not None:
            for t, (task, kind) in enumerate(zip(self.task_names, self.task_types)):
                error = names.normalized_error_name(kind)
                for key, values in ((f"delta_{error}", c.delta_ne), (f"rel_{error}_change", c.rel_ne_change),
                                    ("delta_auc", c.delta_auc)):
                    if np.isfinite(values[t]):
                        out[f"{prefix}/{key}/{task}"] = float(values[t])
                if self.gauc is not None and self.baseline_gauc is not None and np.isfinite(self.gauc[t] - self.baseline_gauc[t]):
                    out[f"{prefix}/delta_{names.GAUC}/{task}"] = float(self.gauc[t] - self.baseline_gauc[t])
            if np.isfinite(c.mean_rel_ne_change):
                out[f"{prefix}/mean_rel_ne_change"] = c.mean_rel_ne_change
        return out

    def save_ne_change_plot(self, path) -> "Path":
        """Bar chart of per-task relative normalized-error change vs the baseline with 95% CI whiskers (needs a
        baseline)."""
        if self.comparison is None:
            raise ValueError("no baseline: evaluate with baseline_predictions to plot the NE change")
        from recsys_mtl.metrics.names import normalized_error_label
        from recsys_mtl.tracking.plots import plot_relative_ne_change

        c = self.comparison
        label = normalized_error_label(self.task_types)
        return plot_relative_ne_change(self.task_names, c.rel_ne_change, path, ci=c.rel_ne_change_ci,
                                       task_types=self.task_types, error_label=label,
                                       title=f"{label} change vs {self.baseline or 'baseline'} (95% CI, paired bootstrap)")

    def to_table(self) -> str:
        from recsys_mtl.metrics.names import normalized_error_label

        m, c = self.metrics, self.comparison
        types = self.task_types
        regression = "regression" in types
        error = normalized_error_label(types)
        head = ["task", "rows", "base_rate" if not regression else "base_rate|mean", error, "AUC", "calib", "logloss"]
        grouped = self.gauc is not None
        if grouped:
            head += ["GAUC"] + (["dGAUC"] if self.baseline_gauc is not None else [])
        if regression:
            head += ["RMSE", "MAE", "MAE raw"]
        if c is not None:
            head += [f"d{error} [95% CI]", "dAUC [95% CI]", f"{error} chg %"]
        rows = []
        nerr = m.normalized_error
        for t, name in enumerate(self.task_names):
            row = [name, str(int(m.n_labelled[t])), _fmt(m.base_rate[t], ".4f"), _fmt(nerr[t], ".5f"),
                   _fmt(m.auc[t], ".5f"), _fmt(m.calibration[t], ".4f"), _fmt(m.logloss[t], ".5f")]
            if grouped:
                row.append(_fmt(float(self.gauc[t]), ".5f"))
                if self.baseline_gauc is not None:
                    row.append(_fmt(float(self.gauc[t] - self.baseline_gauc[t]), "+.5f"))
            if regression:
                row += [_fmt(m.rmse[t], ".5f"), _fmt(m.mae[t], ".5f"), _fmt(m.mae_raw[t], ".5g")]
            if c is not None:
                row += [f"{_fmt(c.delta_ne[t], '+.5f')} [{_fmt(c.delta_ne_ci[t, 0], '+.5f')}, {_fmt(c.delta_ne_ci[t, 1], '+.5f')}]",
                        f"{_fmt(c.delta_auc[t], '+.5f')} [{_fmt(c.delta_auc_ci[t, 0], '+.5f')}, {_fmt(c.delta_auc_ci[t, 1], '+.5f')}]",
                        _fmt(100 * c.rel_ne_change[t], "+.3f")]
            if regression and types[t] == "regression":
                row[0] += " (nmse)"
            if m.flag[t]:
                row[0] += f" ({m.flag[t]})"
            rows.append(row)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(wd) for h, wd in zip(head, widths))]
        lines += ["  ".join(v.ljust(wd) for v, wd in zip(r, widths)) for r in rows]
        if grouped:
            lines.append(f"GAUC: AUC within each {self.gauc_group or 'group'}, averaged with the group's labelled rows "
                         "as weights; groups with one class are skipped" + (" (dGAUC: point change, no CI)"
                                                                            if self.baseline_gauc is not None else ""))
        if regression:
            lines.append(f"{error}: NE for binary tasks, NMSE (MSE / label variance) for tasks marked (nmse); RMSE and "
                         "MAE on the transformed label, MAE raw on the label's own scale")
        if c is not None:
            lo, hi = c.mean_rel_ne_change_ci
            lines.append(
                f"mean relative {error} change vs {self.baseline or 'baseline'}{' (over all tasks)' if regression else ''}: "
                f"{_fmt(100 * c.mean_rel_ne_change, '+.3f')}% "
                f"[{_fmt(100 * lo, '+.3f')}%, {_fmt(100 * hi, '+.3f')}%] (paired bootstrap, {c.n_boot} replicates, "
                f"{c.n_buckets} {c.resampling}, seed {c.seed})"
            )
        return "\n".join(lines)


def evaluate_predictions(predictions, labels, mask=None, task_names: Sequence[str] | None = None, weights=None, *,
                         from_logits: bool = False, baseline_predictions=None, baseline: str | None = None,
                         n_boot: int = 200, seed: int = 0, task_types=None, label_transforms=None, groups=None,
                         gauc_group: str | None = None) -> EvalReport:
    """Exact per-task metrics of `predictions` ([N, T]); with `baseline_predictions` on the same rows,
    adds candidate-minus-baseline deltas with paired-bootstrap 95% CIs. `task_types` / `label_transforms`:
    per task, as in the feature spec (None: all binary). `groups` ([N] integer ids of the `gauc_group` column):
    adds each task's grouped AUC."""
    metrics = task_metrics(predictions, labels, mask, weights, from_logits=from_logits, task_types=task_types,
                           label_transforms=label_transforms)
    T = len(metrics.ne)
    names = list(task_names) if task_names is not None else [f"task{t}" for t in range(T)]
    if len(names) != T:
        raise ValueError(f"task_names has {len(names)} names for {T} prediction columns")
    comparison = None
    if baseline_predictions is not None:
        comparison = compare_models(baseline_predictions, predictions, labels, mask, weights,
                                    n_boot=n_boot, seed=seed, from_logits=from_logits, task_types=task_types,
                                    label_transforms=label_transforms)
    gauc = baseline_gauc = None
    if groups is not None:
        from recsys_mtl.metrics.grouped import grouped_auc

        gauc = grouped_auc(predictions, labels, mask, groups, weights, task_types=task_types).gauc
        if baseline_predictions is not None:
            baseline_gauc = grouped_auc(baseline_predictions, labels, mask, groups, weights, task_types=task_types).gauc
    return EvalReport(task_names=names, metrics=metrics, comparison=comparison, baseline=baseline, gauc=gauc,
                      gauc_group=gauc_group, baseline_gauc=baseline_gauc)


__all__ = [
    "EPS", "NO_LABELS", "SINGLE_CLASS", "CONSTANT_LABEL", "TaskMetrics", "Comparison", "EvalReport",
    "task_metrics", "offline_ne", "offline_auc", "compare_models", "evaluate_predictions",
]
