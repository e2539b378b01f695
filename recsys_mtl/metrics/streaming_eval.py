"""Streaming offline evaluation: per-task statistics whose memory does not grow with the number of rows.

`StreamingEvaluator` takes batches of logits, labels and masks and keeps, per task, float64 sums:

- every task:  labelled rows, sum y, sum y^2, sum of the loss, sum of the prediction;
- binary:      loss = log loss (softplus(x) - y x on the logit x), prediction = sigmoid(x), and histograms of
               the logits (positives, negatives) over `auc_bins` equal bins of [-logit_range, logit_range], with
               each bin's sum of offsets within it: AUC counts each (positive, negative) pair by bin, and pairs
               in one bin by their mean offsets (first order; plain ties would count 1/2). With 2^14 bins
               (2.4e-3 in logit) AUC is within 1e-5 of exact on realistic scores, and within 3e-5 for a
               barely trained rare head whose logits span 0.7 (tests/metrics/test_streaming_eval.py). Logits of a
               task that span only a few bins (an untrained head: ~0.02) get a coarser AUC (seen: 4e-3 off);
- regression:  loss = squared error, plus sum |error| and sum |error| on the raw scale (the label transform
               undone, `log1p` -> expm1), so MSE, RMSE, MAE, normalized MSE (MSE / label variance) come out.

With a baseline model (`n_models=2`: the candidate and the baseline scored on the same rows) and `n_boot > 0`,
the evaluator also runs a streaming Poisson bootstrap: every row gets, per replicate r, a Poisson(1) weight drawn
from a counter-based hash of (seed, r, the row's position in the data set), so the replicates do not depend on
how rows are split into batches or processes. Per replicate it keeps the weighted sums behind each task's
normalized error for both models. Delta-AUC CIs come from the same hash: rows fall into `boot_buckets` buckets
by position, each bucket keeps coarse logit histograms, and replicates weight buckets by Poisson(1).

Every state tensor is a sum, so N processes each accumulate their rows and `all_reduce_()` adds them.
Nothing here depends on the number of rows; the state of a 64-task evaluation is about 34 MB (100 MB with
a baseline and a 200-replicate bootstrap).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from recsys_mtl.metrics.offline import CONSTANT_LABEL, NO_LABELS, SINGLE_CLASS, Comparison, TaskMetrics, _entropy

BINARY = "binary"
REGRESSION = "regression"
TASK_TYPES = (BINARY, REGRESSION)
TRANSFORMS = ("none", "log1p")

LOGIT_RANGE = 20.0
AUC_BINS = 1 << 14
BOOT_BUCKETS = 128
BOOT_BINS = 128

# rows of the per-model sums
_COUNT, _SUM_Y, _SUM_Y2, _SUM_LOSS, _SUM_PRED, _SUM_ABS_ERR, _SUM_ABS_ERR_RAW = range(7)
_N_SUMS = 7
# rows of the per-replicate sums: count, sum y, sum y^2, then one loss sum per model
_REP_SHARED = 3

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_REPLICATE_STREAM = 0x5EED_B007
_BUCKET_STREAM = 0xB0C4E75
#: Poisson(1) draws come from a table indexed by the top bits of a hash (its CDF error is below 2^-20)
_TABLE_BITS = 20


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a counter-based hash."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        return x ^ (x >> np.uint64(31))


def mix64_reference(x: int) -> int:
    """The same hash on one Python int (for tests)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _poisson1_table(bits: int = _TABLE_BITS) -> np.ndarray:
    """table[i] = the Poisson(1) quantile at (i + 1/2) / 2^bits."""
    pmf = [math.exp(-1.0) / math.factorial(k) for k in range(20)]
    u = (np.arange(1 << bits, dtype=np.float64) + 0.5) / (1 << bits)
    return np.searchsorted(np.cumsum(pmf), u, side="right").astype(np.uint8)


_POISSON1 = _poisson1_table()


def replicate_weights(seed: int, n_boot: int, positions) -> np.ndarray:
    """[n_boot, len(positions)] Poisson(1) weights (uint8) of the rows (or buckets) at `positions`: a pure
    function of (seed, replicate, position), whatever batch or process the row is in."""
    pos = np.asarray(positions, dtype=np.int64).astype(np.uint64)
    row_key = mix64(pos ^ mix64(np.uint64(seed & _MASK64)))
    rep_key = mix64(np.arange(n_boot, dtype=np.uint64) + np.uint64((_REPLICATE_STREAM * (seed + 1)) & _MASK64))
    with np.errstate(over="ignore"):
        z = rep_key[:, None] ^ row_key[None, :]  # two rounds of the finaliser on (replicate, row) keys
        z *= _MIX1
        z ^= z >> np.uint64(29)
        z *= _MIX2
        z >>= np.uint64(64 - _TABLE_BITS)
    return _POISSON1[z]


def row_buckets(seed: int, positions, n_buckets: int) -> np.ndarray:
    """The bootstrap bucket of each row position (for delta-AUC CIs)."""
    pos = np.asarray(positions, dtype=np.int64).astype(np.uint64)
    key = mix64(mix64(pos ^ np.uint64(_BUCKET_STREAM)) ^ np.uint64(seed & _MASK64))
    return (key % np.uint64(n_buckets)).astype(np.int64)


def auc_from_histograms(hist: torch.Tensor) -> torch.Tensor:
    """AUC from [..., 2, K] histograms (negatives, positives) over ordered score bins, pairs in one bin counting
    1/2; or from [..., 4, K] with each bin's sums of the scores' offsets within it (in bin widths, [0, 1)) for
    negatives and positives, which order the pairs of a bin to first order: P(pos > neg) ~ 1/2 + mean offset
    of its positives - mean offset of its negatives (exact for linear densities within the bin)."""
    neg, pos = hist[..., 0, :], hist[..., 1, :]
    before = torch.cumsum(neg, -1) - neg
    numer = (pos * (before + 0.5 * neg)).sum(-1)
    if hist.shape[-2] == 4:  # sum over the pairs of a bin of (positive's offset - negative's offset)
        numer = numer + (neg * hist[..., 3, :] - pos * hist[..., 2, :]).sum(-1)
    return numer / (pos.sum(-1) * neg.sum(-1))


@dataclasses.dataclass
class RegressionMetrics:
    """Per-task arrays of length T (NaN for binary tasks and where undefined)."""

    nmse: np.ndarray  # MSE / label variance (1 - R^2), transformed scale
    mse: np.ndarray
    rmse: np.ndarray
    mae: np.ndarray
    mae_raw: np.ndarray  # the transform undone


class StreamingEvaluator:
    """Per-task sufficient statistics of `n_models` models scored on the same rows (see the module doc).

    Args:
        task_types: one of "binary" / "regression" per task.
        transforms: per task, "none" or "log1p" (regression labels and predictions are in the transformed
            space; the raw-scale MAE undoes it). Default: none.
        n_models: 1, or 2 for (candidate, baseline) on the same rows; `update` takes one logits tensor each.
        n_boot: Poisson-bootstrap replicates (needs n_models=2 and row positions in `update`), 0 for none.
        seed: the bootstrap's seed.
    """

    def __init__(self, task_types: Sequence[str], *, transforms: Sequence[str] | None = None, n_models: int = 1,
                 n_boot: int = 0, seed: int = 0, auc_bins: int = AUC_BINS, logit_range: float = LOGIT_RANGE,
                 boot_buckets: int = BOOT_BUCKETS, boot_bins: int = BOOT_BINS,
                 device: torch.device | str = "cpu") -> None:
        task_types = list(task_types)
        bad = [t for t in task_types if t not in TASK_TYPES]
        if bad:
            raise ValueError(f"task_types: {bad[0]!r} is not one of {', '.join(TASK_TYPES)}")
        transforms = list(transforms) if transforms is not None else ["none"] * len(task_types)
        if len(transforms) != len(task_types) or any(t not in TRANSFORMS for t in transforms):
            raise ValueError(f"transforms: expected {len(task_types)} of {', '.join(TRANSFORMS)}, got {transforms}")
        if n_models not in (1, 2):
            raise ValueError(f"n_models must be 1 or 2, got {n_models}")
        if n_boot < 0 or (n_boot and n_models != 2):
            raise ValueError(f"n_boot {n_boot}: the bootstrap compares two models (n_models=2), n_boot >= 0")
        if auc_bins % boot_bins:
            raise ValueError(f"auc_bins ({auc_bins}) must be a multiple of boot_bins ({boot_bins})")
        self.task_types, self.transforms = task_types, transforms
        self.n_tasks, self.n_models, self.n_boot, self.seed = len(task_types), n_models, n_boot, seed
        self.auc_bins, self.logit_range = auc_bins, float(logit_range)
        self.boot_buckets, self.boot_bins = boot_buckets, boot_bins
        self.device = torch.device(device)
        T, f64 = self.n_tasks, dict(dtype=torch.float64, device=self.device)
        self.binary = torch.tensor([t == BINARY for t in task_types], device=self.device)
        self.log1p = torch.tensor([t == "log1p" for t in transforms], device=self.device)
        self.sums = torch.zeros(n_models, _N_SUMS, T, **f64)
        # [model, (negatives, positives, their offset sums), task, bin]
        self.hist = torch.zeros(n_models, 4, T, auc_bins, **f64)
        if n_boot:
            self.replicate_sums = torch.zeros(n_boot, _REP_SHARED + n_models, T, **f64)
            self.bucket_hist = torch.zeros(n_models, 2, boot_buckets, T, boot_bins, **f64)
        else:
            self.replicate_sums = self.bucket_hist = None
        self._task_index = torch.arange(T, device=self.device)
        self.has_regression = REGRESSION in task_types  # known at construction: no branch on tensor values
        self.has_log1p = "log1p" in transforms
        self._bins_per_logit = auc_bins / (2 * self.logit_range)
        # the per-batch columns are [w, y, y^2, (loss, pred, |err|, |raw err|) per model]: rows of self.sums
        self._sum_rows = torch.tensor([r for m in range(n_models) for r in (0, 1, 2, *range(3 + 4 * m, 7 + 4 * m))],
                                      device=self.device)

    # ---------------------------------------------------------------- accumulation
    def _state(self) -> list[torch.Tensor]:
        return [t for t in (self.sums, self.hist, self.replicate_sums, self.bucket_hist) if t is not None]

    @torch.no_grad()
    def update(self, logits: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor, mask: torch.Tensor,
               row_positions=None) -> None:
        """Add a batch: `logits` [B, T] (or one per model), labels [B, T] (binary 0/1, regression transformed),
        mask [B, T] bool; `row_positions` [B] (int64 tensor or array): each row's position in the whole data set,
        needed by the bootstrap. Rows whose mask is False (padding) add nothing. No host synchronisation
        without the bootstrap.

        Per-row values are float32 and summed per batch in float32 (pairwise), then added to float64 totals."""
        per_model = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        if len(per_model) != self.n_models:
            raise ValueError(f"update: expected logits of {self.n_models} model(s), got {len(per_model)}")
        if self.n_boot and row_positions is None:
            raise ValueError("update: the bootstrap needs row_positions")
        w = mask.to(device=self.device, dtype=torch.float32).contiguous()
        y = labels.to(device=self.device, dtype=torch.float32) * w
        B, T = w.shape
        shared = [w, y] + ([y * y] if self.has_regression else [y])  # y^2 = y for 0/1 labels
        cls = (y > 0.5).long()
        hist_w = (w * self.binary).view(-1) if self.has_regression else w.view(-1)
        if self.has_regression:
            y_raw = torch.where(self.log1p, torch.expm1(y), y) if self.has_log1p else y
        columns, losses = list(shared), []
        bins = []
        for x in per_model:
            x = x.to(device=self.device, dtype=torch.float32).contiguous()  # a head's output may be a strided view
            log_loss = torch.nn.functional.softplus(x) - y * x
            prob = torch.sigmoid(x)
            if self.has_regression:
                err = x - y
                pred_raw = torch.where(self.log1p, torch.expm1(x), x) if self.has_log1p else x
                loss = torch.where(self.binary, log_loss, err * err) * w
                columns += [loss, torch.where(self.binary, prob, x) * w, torch.where(self.binary, 0.0, err.abs()) * w,
                            torch.where(self.binary, 0.0, (pred_raw - y_raw).abs()) * w]
            else:
                loss = log_loss * w
                columns += [loss, prob * w, torch.zeros_like(w), torch.zeros_like(w)]
            losses.append(loss)
            scaled = ((x.clamp(-self.logit_range, self.logit_range) + self.logit_range) * self._bins_per_logit)
            position = scaled.long().clamp_(0, self.auc_bins - 1)
            bins.append((position, scaled - position))
        totals = torch.stack([c.sum(0) for c in columns])  # [3 + 4 models, T]; per column: stacking rows first is slow
        self.sums += totals[self._sum_rows].view(self.n_models, _N_SUMS, T).to(torch.float64)
        flat_class_task = (cls * T + self._task_index).view(-1)
        for m, fine in enumerate(bins):
            # AUC histograms: binary labelled rows only (weight 0 elsewhere)
            position, offset = fine
            index = flat_class_task * self.auc_bins + position.view(-1)
            self.hist[m].view(-1).scatter_add_(0, index, hist_w.double())
            self.hist[m].view(-1).scatter_add_(0, index + 2 * T * self.auc_bins, (hist_w * offset.view(-1)).double())
        if self.n_boot:
            self._update_bootstrap(row_positions, shared, losses, bins, flat_class_task, hist_w)

    def _update_bootstrap(self, row_positions, shared, losses, bins, flat_class_task, hist_w) -> None:
        positions = row_positions.cpu().numpy() if isinstance(row_positions, torch.Tensor) else row_positions
        B, T = shared[0].shape
        weights = torch.from_numpy(replicate_weights(self.seed, self.n_boot, positions)).to(self.device, torch.float64)
        # float64: a float32 product accumulates ~sqrt(B) eps of error, which moved CI bounds by 1e-6 between batchings
        per_replicate = torch.matmul(weights, torch.stack(shared + losses).double())  # [3 + models, R, T]
        self.replicate_sums += per_replicate.transpose(0, 1)
        bucket = torch.from_numpy(row_buckets(self.seed, positions, self.boot_buckets)).to(self.device)
        # [class, bucket, task, coarse bin] with the coarse bins nested in the fine ones
        base = ((flat_class_task.view(B, T) // T) * self.boot_buckets + bucket[:, None]) * T + self._task_index
        for m, (fine, _) in enumerate(bins):
            coarse = fine // (self.auc_bins // self.boot_bins)
            self.bucket_hist[m].view(-1).scatter_add_(0, (base * self.boot_bins + coarse).view(-1), hist_w.double())

    def all_reduce_(self, group=None) -> "StreamingEvaluator":
        """Sum the statistics of every process (one collective); every rank then holds the totals."""
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size(group) == 1:
            return self
        state = self._state()
        flat = torch.cat([t.reshape(-1) for t in state])
        dist.all_reduce(flat, group=group)
        offset = 0
        for t in state:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()
        return self

    def merge_(self, other: "StreamingEvaluator") -> "StreamingEvaluator":
        """Add another evaluator's statistics (same settings) into this one."""
        for mine, theirs in zip(self._state(), other._state()):
            mine += theirs.to(mine.device)
        return self

    # ---------------------------------------------------------------- results
    def _flags(self, sums: torch.Tensor) -> list[str]:
        flags = []
        count, y, y2 = (sums[i].tolist() for i in (_COUNT, _SUM_Y, _SUM_Y2))
        for t, kind in enumerate(self.task_types):
            if count[t] == 0:
                flags.append(NO_LABELS)
            elif kind == BINARY and (y[t] == 0 or y[t] == count[t]):
                flags.append(SINGLE_CLASS)
            elif kind == REGRESSION and y2[t] / count[t] - (y[t] / count[t]) ** 2 <= 1e-12 * max(1.0, y2[t] / count[t]):
                flags.append(CONSTANT_LABEL)  # no variance to normalise by
            else:
                flags.append("")
        return flags

    def _normalized_error(self, count, sum_y, sum_y2, sum_loss) -> torch.Tensor:
        """NE for binary tasks, MSE / label variance for regression tasks (any leading shape)."""
        safe = torch.where(count > 0, count, torch.ones_like(count))
        mean_y = sum_y / safe
        baseline_loss = torch.where(self.binary.cpu(), _entropy(mean_y.clamp(0, 1)), sum_y2 / safe - mean_y ** 2)
        return (sum_loss / safe) / baseline_loss

    def normalized_error(self, model: int = 0) -> np.ndarray:
        """Per task: NE (binary) or normalized MSE (regression); NaN where undefined."""
        s = self.sums[model].cpu()
        ne = self._normalized_error(s[_COUNT], s[_SUM_Y], s[_SUM_Y2], s[_SUM_LOSS])
        bad = torch.tensor([f != "" for f in self._flags(s)])
        return torch.where(bad, torch.nan, ne).numpy()

    def auc(self, model: int = 0) -> np.ndarray:
        """Per binary task, AUC from the logit histograms; NaN for regression and single-class tasks."""
        with np.errstate(all="ignore"):
            auc = auc_from_histograms(self.hist[model].cpu().transpose(0, 1))  # [T, 4, K]
        bad = torch.tensor([f != "" or k != BINARY for f, k in zip(self._flags(self.sums[model].cpu()), self.task_types)])
        return torch.where(bad, torch.nan, auc).numpy()

    def task_metrics(self, model: int = 0) -> TaskMetrics:
        """Per task: NE, AUC, calibration, log loss of binary tasks; NMSE, MSE, RMSE, MAE, MAE_raw of regression
        tasks (NaN for the other type); base rate = mean (transformed) label."""
        s = self.sums[model].cpu()
        count, sum_y, loss, pred = s[_COUNT], s[_SUM_Y], s[_SUM_LOSS], s[_SUM_PRED]
        flags = self._flags(s)
        is_binary = self.binary.cpu()
        safe = torch.where(count > 0, count, torch.ones_like(count))
        nan = torch.tensor(torch.nan, dtype=torch.float64)
        keep = is_binary & (count > 0)
        calibration = torch.where(is_binary & (sum_y > 0), pred / torch.where(sum_y > 0, sum_y, 1.0), nan)
        normalized = self.normalized_error(model)
        regression = ~is_binary & (count > 0)

        def per_row(total: torch.Tensor) -> np.ndarray:
            return torch.where(regression, total / safe, nan).numpy()

        mse = per_row(loss)
        return TaskMetrics(
            ne=np.where(is_binary.numpy(), normalized, np.nan), auc=self.auc(model),
            calibration=calibration.numpy(), logloss=torch.where(keep, loss / safe, nan).numpy(),
            base_rate=torch.where(count > 0, sum_y / safe, nan).numpy(), n_labelled=count.numpy().astype(np.int64),
            weight_sum=count.numpy(), flag=flags, task_types=list(self.task_types),
            nmse=np.where(regression.numpy(), normalized, np.nan), mse=mse, rmse=np.sqrt(mse),
            mae=per_row(s[_SUM_ABS_ERR]), mae_raw=per_row(s[_SUM_ABS_ERR_RAW]),
        )

    def regression_metrics(self, model: int = 0) -> RegressionMetrics:
        """nmse, mse, rmse, mae, mae_raw per regression task (NaN for binary tasks)."""
        m = self.task_metrics(model)
        return RegressionMetrics(nmse=m.nmse, mse=m.mse, rmse=m.rmse, mae=m.mae, mae_raw=m.mae_raw)

    def comparison(self, candidate: int = 0, baseline: int = 1) -> Comparison:
        """Candidate minus baseline per task: normalized error (NE or NMSE) and AUC deltas, relative normalized
        error change, with percentile 95% CIs from the Poisson bootstrap (point estimate + percentiles of
        replicate minus full-data value of the same statistic)."""
        if not self.n_boot:
            raise ValueError("comparison: built without a bootstrap (n_models=2, n_boot > 0)")
        import warnings

        R, T = self.n_boot, self.n_tasks
        rep = self.replicate_sums.cpu()
        ne_rep = [self._normalized_error(rep[:, 0], rep[:, 1], rep[:, 2], rep[:, _REP_SHARED + m])
                  for m in (candidate, baseline)]
        ne_b, ne_a = (torch.from_numpy(self.normalized_error(m)) for m in (candidate, baseline))
        auc_b, auc_a = (torch.from_numpy(self.auc(m)) for m in (candidate, baseline))
        # per-replicate bucket weights -> coarse per-replicate histograms, for delta-AUC CIs
        bucket_w = torch.from_numpy(replicate_weights(self.seed ^ 0x5A5A, R, np.arange(self.boot_buckets))).double()
        coarse_full, coarse_rep = [], []
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            for m in (candidate, baseline):
                h = self.bucket_hist[m].cpu()  # [2, M, T, K]
                coarse_full.append(auc_from_histograms(h.sum(1).transpose(0, 1)))  # [T]
                per_rep = torch.einsum("rm,cmtk->rtck", bucket_w, h)  # [R, T, 2, K]
                coarse_rep.append(auc_from_histograms(per_rep))
            d_ne, rel = ne_b - ne_a, ne_b / ne_a - 1
            d_ne_rep = ne_rep[0] - ne_rep[1]
            rel_rep = ne_rep[0] / ne_rep[1] - 1
            d_auc = auc_b - auc_a
            d_auc_rep, d_auc_full = coarse_rep[0] - coarse_rep[1], coarse_full[0] - coarse_full[1]

            def ci(point: torch.Tensor, boot: torch.Tensor, full: torch.Tensor) -> np.ndarray:
                lo, hi = np.nanpercentile((boot - full).numpy(), [2.5, 97.5], axis=0)
                return np.stack([point.numpy() + lo, point.numpy() + hi], axis=-1)

            flags_a = self._flags(self.sums[baseline].cpu())
            valid = torch.tensor([f == "" for f in flags_a]) & torch.isfinite(rel)
            nan = torch.tensor(torch.nan, dtype=torch.float64)
            mean_rel = rel[valid].mean() if bool(valid.any()) else nan
            mean_rep = torch.nanmean(rel_rep[:, valid], 1, keepdim=True) if bool(valid.any()) else nan.expand(R, 1)
            mean_ci = ci(mean_rel[None], mean_rep, mean_rel[None])[0]
            return Comparison(
                delta_ne=d_ne.numpy(), delta_ne_ci=ci(d_ne, d_ne_rep, d_ne),
                delta_auc=d_auc.numpy(), delta_auc_ci=ci(d_auc, d_auc_rep, d_auc_full),
                rel_ne_change=rel.numpy(), rel_ne_change_ci=ci(rel, rel_rep, rel),
                mean_rel_ne_change=float(mean_rel), mean_rel_ne_change_ci=(float(mean_ci[0]), float(mean_ci[1])),
                n_boot=R, n_buckets=self.boot_buckets, seed=self.seed, task_types=list(self.task_types),
                resampling="row buckets for delta AUC; NE and its changes: Poisson(1) weights per row",
            )

    def report(self, task_names: Sequence[str], baseline: str | None = None):
        """The `EvalReport` of model 0 (with its comparison against model 1 when the bootstrap ran)."""
        from recsys_mtl.metrics.offline import EvalReport

        if len(task_names) != self.n_tasks:
            raise ValueError(f"task_names has {len(task_names)} names for {self.n_tasks} tasks")
        return EvalReport(task_names=list(task_names), metrics=self.task_metrics(),
                          comparison=self.comparison() if self.n_boot else None, baseline=baseline)

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._state())


def task_kinds(spec) -> tuple[list[str], list[str]]:
    """(task types, label transforms) of a feature spec; specs without task types are all binary."""
    types = list(getattr(spec, "task_types", None) or ["binary"] * spec.num_tasks)
    transforms = [getattr(t, "transform", None) or "none" for t in spec.tasks]
    return types, transforms


def evaluator_for(spec, **kwargs) -> "StreamingEvaluator":
    """A StreamingEvaluator for a feature spec's tasks (their types and label transforms)."""
    types, transforms = task_kinds(spec)
    return StreamingEvaluator(types, transforms=transforms, **kwargs)


__all__ = ["evaluator_for", "task_kinds", "BINARY", "REGRESSION", "StreamingEvaluator", "RegressionMetrics", "auc_from_histograms", "mix64",
           "mix64_reference", "replicate_weights", "row_buckets"]
