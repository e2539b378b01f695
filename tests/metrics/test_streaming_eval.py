"""Streaming evaluation statistics against the exact in-memory metrics (recsys_mtl.metrics.offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_mtl.metrics.offline import NO_LABELS, SINGLE_CLASS, compare_models, task_metrics
from recsys_mtl.metrics.streaming_eval import (
    StreamingEvaluator, mix64, mix64_reference, replicate_weights, row_buckets,
)

RATES = torch.tensor([0.4, 0.1, 0.01, 0.002])


def _realistic(n: int, seed: int = 0):
    """Logits of two models of different quality on labels drawn from a latent logit; 10% of labels missing."""
    g = torch.Generator().manual_seed(seed)
    T = len(RATES)
    latent = torch.logit(RATES) + 1.2 * torch.randn(n, T, generator=g)
    labels = (torch.rand(n, T, generator=g) < torch.sigmoid(latent)).float()
    candidate = latent + 0.5 * torch.randn(n, T, generator=g)
    baseline = latent + 0.6 * torch.randn(n, T, generator=g)
    mask = torch.rand(n, T, generator=g) < 0.9
    return candidate, baseline, labels, mask


def _stream(ev: StreamingEvaluator, models, labels, mask, rows: torch.Tensor, batch: int) -> StreamingEvaluator:
    """Feed the rows `rows` (positions in the data set) in batches."""
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        ev.update([m[r] for m in models], labels[r], mask[r], r)
    return ev


@pytest.fixture(scope="module")
def data():
    return _realistic(200_000)


def test_hash_matches_its_python_reference():
    values = [0, 1, 2, 12345678901, 2**62 + 7, 2**64 - 1]
    got = mix64(np.array(values, dtype=np.uint64)).tolist()
    assert got == [mix64_reference(v) for v in values]


def test_poisson_replicate_weights_have_mean_and_variance_one_and_depend_only_on_position():
    w = replicate_weights(3, 50, np.arange(100_000)).astype(np.float64)
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02
    assert w.max() >= 6  # the tail is there
    again = replicate_weights(3, 50, np.arange(99_990, 100_000))
    np.testing.assert_array_equal(again, w[:, 99_990:])
    assert not np.array_equal(replicate_weights(4, 50, np.arange(10)), replicate_weights(3, 50, np.arange(10)))
    buckets = row_buckets(3, np.arange(100_000), 128)
    counts = np.bincount(buckets, minlength=128)
    assert counts.min() > 600 and counts.max() < 960


def test_streaming_metrics_match_the_exact_ones_and_auc_is_within_1e_4(data):
    candidate, _, labels, mask = data
    ev = _stream(StreamingEvaluator(["binary"] * 4), [candidate], labels, mask, torch.arange(len(labels)), 8192)
    exact = task_metrics(candidate, labels, mask, from_logits=True)
    got = ev.task_metrics()
    np.testing.assert_allclose(got.ne, exact.ne, rtol=1e-6)
    np.testing.assert_allclose(got.logloss, exact.logloss, rtol=1e-6)
    np.testing.assert_allclose(got.calibration, exact.calibration, rtol=1e-6)
    np.testing.assert_allclose(got.base_rate, exact.base_rate, rtol=1e-9)
    np.testing.assert_array_equal(got.n_labelled, exact.n_labelled)
    assert np.abs(got.auc - exact.auc).max() < 1e-4, got.auc - exact.auc
    assert got.flag == exact.flag == [""] * 4


def test_results_do_not_depend_on_batching_row_order_or_the_number_of_processes(data):
    candidate, baseline, labels, mask = data
    n = len(labels)
    one = _stream(StreamingEvaluator(["binary"] * 4, n_models=2, n_boot=100, seed=5), [candidate, baseline], labels,
                  mask, torch.arange(n), 8192)
    # "two processes": each sees its own shuffled half in other batch sizes; their sums are added
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    halves = [StreamingEvaluator(["binary"] * 4, n_models=2, n_boot=100, seed=5) for _ in range(2)]
    _stream(halves[0], [candidate, baseline], labels, mask, order[: n // 3], 1000)
    _stream(halves[1], [candidate, baseline], labels, mask, order[n // 3:], 5000)
    two = halves[0].merge_(halves[1])
    for a, b in zip(one._state(), two._state()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    c1, c2 = one.comparison(), two.comparison()
    np.testing.assert_allclose(c1.delta_ne, c2.delta_ne, rtol=1e-5)
    np.testing.assert_allclose(c1.rel_ne_change_ci, c2.rel_ne_change_ci, rtol=1e-4)
    np.testing.assert_allclose(c1.delta_auc_ci, c2.delta_auc_ci, rtol=1e-4)
    np.testing.assert_allclose(one.auc(), two.auc(), rtol=1e-9)


def test_bootstrap_cis_agree_with_the_exact_paired_bootstrap(data):
    candidate, baseline, labels, mask = data
    ev = _stream(StreamingEvaluator(["binary"] * 4, n_models=2, n_boot=200, seed=0), [candidate, baseline], labels,
                 mask, torch.arange(len(labels)), 8192)
    got = ev.comparison()
    exact = compare_models(baseline, candidate, labels, mask, from_logits=True, n_boot=200, seed=0)
    np.testing.assert_allclose(got.delta_ne, exact.delta_ne, rtol=1e-5)
    np.testing.assert_allclose(got.rel_ne_change, exact.rel_ne_change, rtol=1e-5)
    assert np.abs(got.delta_auc - exact.delta_auc).max() < 2e-5
    # the CIs are random (other replicate draws): their widths agree to within bootstrap noise
    for mine, ref in ((got.delta_ne_ci, exact.delta_ne_ci), (got.delta_auc_ci, exact.delta_auc_ci),
                      (got.rel_ne_change_ci, exact.rel_ne_change_ci)):
        ratio = (mine[:, 1] - mine[:, 0]) / (ref[:, 1] - ref[:, 0])
        assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio
        assert np.all(mine[:, 0] < mine[:, 1])
    assert got.mean_rel_ne_change_ci[0] < got.mean_rel_ne_change < got.mean_rel_ne_change_ci[1] < 0


def test_a_model_compared_with_itself_has_zero_deltas_and_zero_width_cis(data):
    candidate, _, labels, mask = data
    ev = _stream(StreamingEvaluator(["binary"] * 4, n_models=2, n_boot=50), [candidate, candidate], labels, mask,
                 torch.arange(20_000), 4096)
    c = ev.comparison()
    assert np.all(c.delta_ne == 0) and np.all(c.delta_ne_ci == 0) and np.all(c.delta_auc_ci == 0)


def test_regression_tasks_get_mse_rmse_mae_nmse_and_raw_scale_mae():
    g = torch.Generator().manual_seed(0)
    n = 50_000
    raw = torch.distributions.Exponential(0.1).sample((n, 2))
    labels = torch.stack([raw[:, 0], torch.log1p(raw[:, 1])], 1)  # task 1 trains on log1p(label)
    pred = labels + 0.3 * torch.randn(n, 2, generator=g)
    mask = torch.rand(n, 2, generator=g) < 0.8
    ev = StreamingEvaluator(["regression", "regression"], transforms=["none", "log1p"])
    for s in range(0, n, 7000):
        ev.update(pred[s:s + 7000], labels[s:s + 7000], mask[s:s + 7000])
    m = ev.regression_metrics()
    y, p, k = labels.double().numpy(), pred.double().numpy(), mask.numpy()
    for t in range(2):
        yt, pt = y[k[:, t], t], p[k[:, t], t]
        mse = np.mean((pt - yt) ** 2)
        np.testing.assert_allclose(m.mse[t], mse, rtol=1e-5)
        np.testing.assert_allclose(m.rmse[t], np.sqrt(mse), rtol=1e-5)
        np.testing.assert_allclose(m.nmse[t], mse / np.var(yt), rtol=1e-5)
        np.testing.assert_allclose(m.mae[t], np.mean(np.abs(pt - yt)), rtol=1e-5)
        undo = np.expm1 if t == 1 else (lambda v: v)
        np.testing.assert_allclose(m.mae_raw[t], np.mean(np.abs(undo(pt) - undo(yt))), rtol=1e-5)
    assert np.isnan(ev.task_metrics().auc).all()  # no AUC for regression


def test_mixed_binary_and_regression_tasks_keep_their_own_metrics(data):
    candidate, _, labels, mask = data
    reg_label = candidate[:, :1] * 0.5
    ev = StreamingEvaluator(["binary", "regression"])
    ev.update(torch.cat([candidate[:, :1], candidate[:, :1] * 0.4], 1), torch.cat([labels[:, :1], reg_label], 1),
              torch.cat([mask[:, :1], mask[:, :1]], 1))
    exact = task_metrics(candidate[:, :1], labels[:, :1], mask[:, :1], from_logits=True)
    np.testing.assert_allclose(ev.task_metrics().ne[:1], exact.ne, rtol=1e-6)
    assert np.isnan(ev.task_metrics().ne[1]) and np.isnan(ev.regression_metrics().mse[0])
    k = mask[:, 0].numpy()
    np.testing.assert_allclose(ev.regression_metrics().mse[1],
                               np.mean((0.1 * candidate[k, 0].double().numpy()) ** 2), rtol=1e-5)
    np.testing.assert_allclose(ev.normalized_error()[0], exact.ne[0], rtol=1e-6)


def test_tasks_without_labels_or_with_one_class_are_flagged_not_errors():
    logits = torch.randn(100, 3)
    labels = torch.zeros(100, 3)
    labels[::2, 2] = 1
    mask = torch.ones(100, 3, dtype=torch.bool)
    mask[:, 0] = False
    ev = StreamingEvaluator(["binary"] * 3)
    ev.update(logits, labels, mask)
    m = ev.task_metrics()
    assert m.flag == [NO_LABELS, SINGLE_CLASS, ""]
    assert np.isnan(m.ne[:2]).all() and np.isnan(m.auc[:2]).all() and np.isfinite(m.ne[2])


def test_bad_settings_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="task_types"):
        StreamingEvaluator(["binary", "ranking"])
    with pytest.raises(ValueError, match="n_boot"):
        StreamingEvaluator(["binary"], n_boot=10)
    ev = StreamingEvaluator(["binary"], n_models=2, n_boot=10)
    with pytest.raises(ValueError, match="row_positions"):
        ev.update([torch.zeros(2, 1), torch.zeros(2, 1)], torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))


def test_auc_of_concentrated_scores_stays_within_1e_4_thanks_to_the_in_bin_offsets():
    """A barely trained rare head: logits within ~0.7 of each other, 0.1% positives (ties alone would miss by 4e-4)."""
    g = torch.Generator().manual_seed(2)
    n = 100_000
    latent = -7.0 + 0.1 * torch.randn(n, 1, generator=g)
    labels = (torch.rand(n, 1, generator=g) < torch.sigmoid(latent + 3 * (latent + 7))).float()
    mask = torch.ones(n, 1, dtype=torch.bool)
    exact = task_metrics(latent, labels, mask, from_logits=True).auc
    with_offsets = StreamingEvaluator(["binary"])
    with_offsets.update(latent, labels, mask)
    assert abs(with_offsets.auc() - exact).max() < 1e-4
    ties_only = with_offsets.hist[0, :2].transpose(0, 1)  # the same bins, pairs in a bin counted 1/2
    from recsys_mtl.metrics.streaming_eval import auc_from_histograms
    assert abs(auc_from_histograms(ties_only).numpy() - exact).max() > abs(with_offsets.auc() - exact).max()
