"""Regression metrics: exact offline MSE/RMSE/MAE/NMSE/MAE_raw against numpy, the paired bootstrap on the normalized
error of mixed tasks, and TorchRec's streaming MSE/MAE against the offline values."""

import math

import numpy as np
import pytest
import torch

from recsys_mtl.metrics import names
from recsys_mtl.metrics.offline import CONSTANT_LABEL, compare_models, evaluate_predictions, task_metrics
from recsys_mtl.metrics.streaming import StreamingTaskMetrics

TYPES = ["binary", "regression", "binary", "regression"]
TRANSFORMS = ["none", "log1p", "none", "none"]
N = 4000


def mixed(seed=0, noise=0.8, n=N):
    """Logits/outputs [n, 4], labels, mask: two binary tasks and two regression tasks (log1p watch time, a score)."""
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(n, 4, generator=g)
    binary = (torch.rand(n, 4, generator=g) < torch.sigmoid(signal)).float()
    watch = torch.log1p(torch.exp(2.5 + signal + 0.7 * torch.randn(n, 4, generator=g)))
    labels = torch.where(torch.tensor([t == "regression" for t in TYPES]), watch, binary)
    outputs = torch.where(torch.tensor([t == "regression" for t in TYPES]),
                          watch + noise * torch.randn(n, 4, generator=g), signal)
    mask = torch.rand(n, 4, generator=g) < torch.tensor([1.0, 0.6, 0.8, 1.0])
    return outputs, labels, mask


def test_offline_regression_metrics_equal_numpy_on_labelled_rows():
    outputs, labels, mask = mixed()
    m = task_metrics(outputs, labels, mask, from_logits=True, task_types=TYPES, label_transforms=TRANSFORMS)
    for t in (1, 3):
        keep = mask[:, t].numpy()
        p, y = outputs[keep, t].double().numpy(), labels[keep, t].double().numpy()
        mse = np.mean((p - y) ** 2)
        assert m.mse[t] == pytest.approx(mse, rel=1e-9)
        assert m.rmse[t] == pytest.approx(math.sqrt(mse), rel=1e-9)
        assert m.mae[t] == pytest.approx(np.mean(np.abs(p - y)), rel=1e-9)
        assert m.nmse[t] == pytest.approx(mse / np.var(y), rel=1e-9)  # 1 - R^2
        raw = (np.expm1(p), np.expm1(y)) if TRANSFORMS[t] == "log1p" else (p, y)
        assert m.mae_raw[t] == pytest.approx(np.mean(np.abs(raw[0] - raw[1])), rel=1e-9)
        assert m.base_rate[t] == pytest.approx(y.mean(), rel=1e-9)
    assert m.task_types == TYPES
    # binary tasks keep NE/AUC and have no regression values, and the other way round
    assert np.isfinite(m.ne[[0, 2]]).all() and np.isnan(m.ne[[1, 3]]).all()
    assert np.isnan(m.auc[[1, 3]]).all() and np.isnan(m.calibration[[1, 3]]).all()
    assert np.isnan(m.nmse[[0, 2]]).all() and np.isnan(m.mae_raw[[0, 2]]).all()
    np.testing.assert_array_equal(m.normalized_error, np.where([False, True, False, True], m.nmse, m.ne))


def test_binary_metrics_are_unchanged_by_regression_columns_beside_them():
    outputs, labels, mask = mixed()
    both = task_metrics(outputs, labels, mask, from_logits=True, task_types=TYPES)
    alone = task_metrics(outputs[:, [0, 2]], labels[:, [0, 2]], mask[:, [0, 2]], from_logits=True)
    np.testing.assert_array_equal(both.ne[[0, 2]], alone.ne)
    np.testing.assert_array_equal(both.auc[[0, 2]], alone.auc)


def test_predicting_the_label_mean_scores_nmse_one_and_a_perfect_model_zero():
    _, labels, mask = mixed()
    mean = (labels * mask).sum(0) / mask.sum(0)
    m = task_metrics(mean.expand_as(labels), labels, mask, task_types=["regression"] * 4)
    np.testing.assert_allclose(m.nmse, 1.0, rtol=1e-9)
    assert (task_metrics(labels, labels, mask, task_types=["regression"] * 4).nmse == 0).all()


def test_a_constant_or_absent_regression_label_is_flagged_not_an_exception():
    labels = torch.full((10, 2), 3.0)
    mask = torch.ones(10, 2, dtype=torch.bool)
    mask[:, 1] = False
    m = task_metrics(torch.randn(10, 2), labels, mask, task_types=["regression"] * 2)
    assert m.flag == [CONSTANT_LABEL, "no_labels"] and np.isnan(m.nmse).all()
    assert np.isfinite(m.mse[0])


def test_regression_labels_outside_0_1_are_accepted_but_binary_ones_are_not():
    labels = torch.tensor([[2.5, 0.0], [7.0, 1.0]])
    task_metrics(torch.zeros(2, 2), labels, task_types=["regression", "binary"], from_logits=True)
    with pytest.raises(ValueError, match=r"labels must be 0 or 1 wherever mask is True \(binary tasks"):
        task_metrics(torch.zeros(2, 2), labels, task_types=["binary", "regression"], from_logits=True)
    with pytest.raises(ValueError, match="task_types has 1 entries for 2 task columns"):
        task_metrics(torch.zeros(2, 2), labels, task_types=["regression"])


def test_the_bootstrap_compares_the_normalized_error_nmse_for_regression_and_ne_for_binary_tasks():
    outputs, labels, mask = mixed()
    better, _, _ = mixed(noise=0.4)  # same labels (same seed), half the regression noise
    c = compare_models(outputs, better, labels, mask, from_logits=True, task_types=TYPES, n_boot=200, seed=1)
    a = task_metrics(outputs, labels, mask, from_logits=True, task_types=TYPES)
    b = task_metrics(better, labels, mask, from_logits=True, task_types=TYPES)
    np.testing.assert_allclose(c.rel_ne_change, b.normalized_error / a.normalized_error - 1, rtol=1e-9)
    for t in (1, 3):  # the better model is clearly better, and its CI says so
        assert c.rel_ne_change[t] < -0.3 and c.rel_ne_change_ci[t, 1] < 0 < c.rel_ne_change_ci[t, 1] - c.rel_ne_change_ci[t, 0]
        assert c.rel_ne_change_ci[t, 0] <= c.rel_ne_change[t] <= c.rel_ne_change_ci[t, 1]
        assert np.isnan(c.delta_auc[t])
    assert c.rel_ne_change[0] == 0 and c.rel_ne_change[2] == 0  # binary outputs are the same
    assert c.mean_rel_ne_change == pytest.approx(np.mean(c.rel_ne_change), rel=1e-12)  # over all four tasks
    lo, hi = c.mean_rel_ne_change_ci
    assert lo < c.mean_rel_ne_change < hi < 0
    assert c.task_types == TYPES


def test_the_report_logs_regression_metrics_under_their_names_and_labels_its_columns():
    outputs, labels, mask = mixed()
    better, _, _ = mixed(noise=0.4)
    task_names = ["click", "watch_time", "like", "score"]
    report = evaluate_predictions(better, labels, mask, task_names, from_logits=True, baseline_predictions=outputs,
                                  task_types=TYPES, label_transforms=TRANSFORMS, n_boot=50)
    logged = report.to_metrics()
    for metric in names.REGRESSION_METRICS + ("label_mean", "delta_nmse", "rel_nmse_change"):
        assert f"eval/{metric}/watch_time" in logged and f"eval/{metric}/score" in logged
    for metric in ("ne", "auc", "calibration", "logloss", "base_rate", "delta_ne", "rel_ne_change", "delta_auc"):
        assert f"eval/{metric}/click" in logged and f"eval/{metric}/watch_time" not in logged
    assert "eval/nmse/click" not in logged and "eval/mean_rel_ne_change" in logged
    table = report.to_table()
    assert "NE|NMSE" in table.splitlines()[0] and "dNE|NMSE [95% CI]" in table and "MAE raw" in table
    assert "watch_time (nmse)" in table and "mean relative NE|NMSE change vs baseline (over all tasks)" in table


def test_names_give_each_task_type_its_normalized_error():
    assert names.normalized_error_name("binary") == "ne" and names.normalized_error_name("regression") == "nmse"
    assert names.normalized_error_label(["binary"]) == "NE" and names.normalized_error_label(TYPES) == "NE|NMSE"
    with pytest.raises(ValueError, match="unknown task type 'ordinal'"):
        names.normalized_error_name("ordinal")


def test_streaming_mse_mae_and_nmse_equal_the_offline_values_and_binary_ne_is_unchanged():
    outputs, labels, mask = mixed(n=2048)
    task_names = ["click", "watch_time", "like", "score"]
    streaming = StreamingTaskMetrics(task_names, 256, window_rows=1024, task_types=TYPES)
    binary_only = StreamingTaskMetrics(["click", "like"], 256, window_rows=1024)
    for start in range(0, 2048, 256):
        rows = slice(start, start + 256)
        streaming.update(outputs[rows], labels[rows], mask[rows])
        binary_only.update(outputs[rows][:, [0, 2]], labels[rows][:, [0, 2]], mask[rows][:, [0, 2]])
    values = streaming.compute()
    exact = task_metrics(outputs, labels, mask, from_logits=True, task_types=TYPES)
    window = task_metrics(outputs[-1024:], labels[-1024:], mask[-1024:], from_logits=True, task_types=TYPES)
    for ours, ref in (("mse_lifetime", exact.mse), ("rmse_lifetime", exact.rmse), ("mae_lifetime", exact.mae),
                      ("nmse_lifetime", exact.nmse), ("mse", window.mse), ("nmse", window.nmse), ("mae", window.mae)):
        np.testing.assert_allclose(values[ours].numpy(), ref, rtol=1e-5, err_msg=ours)  # NaN for binary tasks too
    alone = binary_only.compute()
    for ours in ("ne", "ne_lifetime", "calibration", "auc"):
        np.testing.assert_allclose(values[ours].numpy()[[0, 2]], alone[ours].numpy(), rtol=1e-6, err_msg=ours)
        assert np.isnan(values[ours].numpy()[[1, 3]]).all()
    state = streaming.state_dict()
    assert set(state) == {"ne", "calibration", "mse", "mae"}
    resumed = StreamingTaskMetrics(task_names, 256, window_rows=1024, task_types=TYPES)
    resumed.load_state_dict(state)
    np.testing.assert_allclose(resumed.compute()["nmse_lifetime"].numpy(), exact.nmse, rtol=1e-5)


def test_streaming_regression_values_are_nan_until_the_task_has_labels():
    streaming = StreamingTaskMetrics(["watch"], 8, window_rows=16, task_types=["regression"])
    streaming.update(torch.randn(8, 1), torch.randn(8, 1), torch.zeros(8, 1, dtype=torch.bool))
    values = streaming.compute()
    assert set(values) == {"mse", "mse_lifetime", "rmse", "rmse_lifetime", "nmse", "nmse_lifetime", "mae",
                           "mae_lifetime"}
    assert all(torch.isnan(v).all() for v in values.values())
