"""Offline per-task metrics against scikit-learn, and the paired bootstrap comparison."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys_mtl.metrics.offline import (
    NO_LABELS, SINGLE_CLASS, compare_models, evaluate_predictions, task_metrics,
)


def _data(seed=0, N=4000, T=6, ties=True):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, (N, T))
    if ties:
        p = np.round(p, 2)  # ~100 distinct scores: many ties
    y = (rng.uniform(size=(N, T)) < p).astype(np.int64)
    mask = rng.uniform(size=(N, T)) < 0.7
    y[~mask] = -1  # garbage where unlabelled: must be ignored
    w = rng.uniform(0.2, 3.0, N)
    return p, y, mask, w


def _sk_ne(y, p, w=None):
    base = np.average(y, weights=w)
    return log_loss(y, p, sample_weight=w) / log_loss(y, np.full(len(y), base), sample_weight=w)


@pytest.mark.parametrize("weighted", [False, True])
def test_ne_and_auc_match_sklearn_with_ties_and_masks(weighted):
    p, y, mask, w = _data()
    m = task_metrics(p, y, mask, w if weighted else None)
    for t in range(p.shape[1]):
        sel = mask[:, t]
        ww = w[sel] if weighted else None
        assert m.ne[t] == pytest.approx(_sk_ne(y[sel, t], p[sel, t], ww), rel=1e-9)
        assert m.auc[t] == pytest.approx(roc_auc_score(y[sel, t], p[sel, t], sample_weight=ww), abs=1e-12)
        assert m.logloss[t] == pytest.approx(log_loss(y[sel, t], p[sel, t], sample_weight=ww), rel=1e-9)
        assert m.calibration[t] == pytest.approx(np.average(p[sel, t], weights=ww) / np.average(y[sel, t], weights=ww))
        assert m.n_labelled[t] == sel.sum()
        assert m.flag[t] == ""


def test_auc_is_exact_when_every_score_is_tied():
    y = np.array([[0], [1], [0], [1], [1]])
    m = task_metrics(np.full((5, 1), 0.3), y)
    assert m.auc[0] == pytest.approx(0.5)
    assert m.auc[0] == pytest.approx(roc_auc_score(y[:, 0], np.full(5, 0.3)))


def test_logits_give_the_same_metrics_as_probabilities():
    p, y, mask, _ = _data(ties=False)
    logits = np.log(p) - np.log1p(-p)
    a, b = task_metrics(p, y, mask), task_metrics(logits, y, mask, from_logits=True)
    np.testing.assert_allclose(a.ne, b.ne, rtol=1e-9)
    np.testing.assert_allclose(a.auc, b.auc, rtol=1e-12)
    np.testing.assert_allclose(a.calibration, b.calibration, rtol=1e-9)


def test_per_task_weights_of_shape_n_by_t_are_accepted():
    p, y, mask, w = _data(T=3)
    wt = np.stack([w, 2 * w, np.ones_like(w)], axis=1)
    m = task_metrics(p, y, mask, wt)
    sel = mask[:, 2]
    assert m.ne[2] == pytest.approx(_sk_ne(y[sel, 2], p[sel, 2]), rel=1e-9)
    assert m.ne[1] == pytest.approx(task_metrics(p, y, mask, w).ne[1], rel=1e-9)  # scaling w changes nothing


def test_degenerate_tasks_give_nan_and_a_flag_instead_of_raising():
    p, y, mask, _ = _data(T=4)
    mask[:, 0] = False  # no labels
    y[:, 1] = 1  # single class
    m = task_metrics(p, y, mask)
    assert m.flag[:2] == [NO_LABELS, SINGLE_CLASS] and m.flag[2:] == ["", ""]
    assert np.isnan(m.ne[:2]).all() and np.isnan(m.auc[:2]).all()
    assert np.isfinite(m.ne[2:]).all() and np.isfinite(m.auc[2:]).all()
    assert np.isnan(m.logloss[0]) and np.isfinite(m.logloss[1])
    table = evaluate_predictions(p, y, mask, ["a", "b", "c", "d"]).to_table()
    assert "a (no_labels)" in table and "b (single_class)" in table


def test_bad_inputs_raise_clear_errors():
    p, y, mask, _ = _data(T=2)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        task_metrics(p, np.where(mask, 2, 0), mask)
    with pytest.raises(ValueError, match="probabilities"):
        task_metrics(p * 3, y, mask)
    with pytest.raises(ValueError, match="same"):
        task_metrics(p[:, :1], y, mask)


def test_bootstrap_of_identical_models_gives_zero_delta_and_zero_width_ci():
    p, y, mask, _ = _data()
    c = compare_models(p, p, y, mask, n_boot=50, seed=1)
    np.testing.assert_allclose(c.delta_ne, 0, atol=1e-15)
    np.testing.assert_allclose(c.delta_ne_ci, 0, atol=1e-12)
    np.testing.assert_allclose(c.delta_auc_ci, 0, atol=1e-12)
    assert c.mean_rel_ne_change == pytest.approx(0, abs=1e-12)


def test_the_mean_change_interval_stays_finite_with_many_rare_tasks():
    """10 of 12 tasks have one positive: most replicates miss it for some task. The replicate's mean is over the
    tasks it can score, so the interval is finite and holds the point estimate."""
    rng = np.random.default_rng(0)
    N, T = 5000, 12
    p = rng.uniform(0.05, 0.95, (N, T))
    y = (rng.uniform(size=(N, T)) < p).astype(np.int64)
    y[:, 2:] = 0
    y[rng.integers(0, N, T - 2), np.arange(2, T)] = 1
    noisy = np.clip(p + rng.normal(0, 0.1, p.shape), 0.01, 0.99)
    c = compare_models(noisy, p, y, n_boot=100, seed=0)
    lo, hi = c.mean_rel_ne_change_ci
    assert np.isfinite([lo, hi]).all() and lo <= c.mean_rel_ne_change <= hi


def _constructed_case(seed, N):
    """Model a predicts the true probability; model b is miscalibrated and noisier (worse NE and AUC)."""
    rng = np.random.default_rng(seed)
    q = rng.beta(2, 5, (N, 2))
    y = (rng.uniform(size=q.shape) < q).astype(np.int64)
    b = 1 / (1 + np.exp(-(1.6 * (np.log(q) - np.log1p(-q)) + 0.3 + 0.8 * rng.standard_normal(q.shape))))
    return q, b, y


def test_bootstrap_ci_contains_the_true_delta_in_a_constructed_case():
    q, b, y = _constructed_case(seed=123, N=400_000)  # the population delta, to ~1e-4
    big = compare_models(q, b, y, n_boot=10, seed=0)
    true_ne, true_auc = big.delta_ne, big.delta_auc
    covered_ne = covered_auc = 0
    repeats = 20
    for seed in range(repeats):
        qs, bs, ys = _constructed_case(seed, N=5000)
        c = compare_models(qs, bs, ys, n_boot=200, seed=seed)
        covered_ne += ((c.delta_ne_ci[:, 0] <= true_ne) & (true_ne <= c.delta_ne_ci[:, 1])).sum()
        covered_auc += ((c.delta_auc_ci[:, 0] <= true_auc) & (true_auc <= c.delta_auc_ci[:, 1])).sum()
        assert (c.delta_ne_ci[:, 0] <= c.delta_ne).all() and (c.delta_ne <= c.delta_ne_ci[:, 1]).all()
    # 95% intervals over 40 (repeat, task) pairs: expect ~38; fewer than 33 would mean broken intervals
    assert covered_ne >= 33 and covered_auc >= 33, (covered_ne, covered_auc)
    assert (true_ne > 0).all() and (true_auc < -0.01).all()  # b really is worse on both, so the CIs are not trivial


def test_evaluate_predictions_reports_deltas_against_the_baseline_and_stable_metric_names():
    p, y, mask, _ = _data(T=3)
    worse = np.clip(p + np.random.default_rng(9).normal(0, 0.15, p.shape), 0.01, 0.99)
    r = evaluate_predictions(worse, y, mask, ["ctr", "like", "share"], baseline_predictions=p,
                             baseline="run123", n_boot=50)
    metrics = r.to_metrics()
    for task in ("ctr", "like", "share"):
        for name in ("ne", "auc", "calibration", "logloss", "delta_ne", "delta_auc", "rel_ne_change"):
            assert f"eval/{name}/{task}" in metrics
    assert metrics["eval/mean_rel_ne_change"] > 0
    assert (r.comparison.delta_ne_ci[:, 0] > 0).all()  # clearly worse on every task
    table = r.to_table()
    assert "mean relative NE change vs run123" in table and "ctr" in table


def test_eval_report_saves_the_ne_change_plot_with_ci_whiskers(tmp_path):
    p, y, mask, _ = _data(T=3)
    worse = np.clip(p + np.random.default_rng(9).normal(0, 0.1, p.shape), 0.01, 0.99)
    r = evaluate_predictions(worse, y, mask, ["ctr", "like", "share"], baseline_predictions=p, n_boot=20)
    assert r.save_ne_change_plot(tmp_path / "ne.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="no baseline"):
        evaluate_predictions(p, y, mask).save_ne_change_plot(tmp_path / "x.png")


def test_task_chunking_does_not_change_results(monkeypatch):
    from recsys_mtl.metrics import offline

    p, y, mask, w = _data(T=5)
    whole = task_metrics(p, y, mask, w)
    monkeypatch.setattr(offline, "_ELEMENTS_PER_CHUNK", p.shape[0] * 2)  # 2 tasks per chunk
    chunked = task_metrics(p, y, mask, w)
    np.testing.assert_allclose(whole.ne, chunked.ne, rtol=1e-12)  # only summation order differs
    np.testing.assert_allclose(whole.auc, chunked.auc, rtol=1e-12)


def test_torch_inputs_are_accepted():
    p, y, mask, _ = _data(T=2)
    a = task_metrics(torch.tensor(p, dtype=torch.float32), torch.tensor(y), torch.tensor(mask))
    b = task_metrics(p.astype(np.float32), y, mask)
    np.testing.assert_allclose(a.ne, b.ne)
