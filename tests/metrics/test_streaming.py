"""Streaming TorchRec metrics (fused across tasks) against the exact offline metrics on the same predictions."""

import numpy as np
import pytest
import torch

from recsys_mtl.metrics.offline import task_metrics
from recsys_mtl.metrics.streaming import StreamingTaskMetrics

T, B, STEPS, WINDOW_STEPS = 6, 256, 12, 4


def _steps(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        logits = torch.randn(B, T, generator=g) * 1.5 - torch.linspace(0, 3, T)  # base rates from ~50% to ~5%
        labels = (torch.rand(B, T, generator=g) < torch.sigmoid(logits + 0.5 * torch.randn(B, T, generator=g))).float()
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[:, 2] = torch.rand(B, generator=g) < 0.3  # a survey-like task, labelled on 30% of rows
        mask[:, 3] = labels[:, 0] > 0  # a post-click task, labelled where task 0 is positive
        labels[~mask] = torch.randint(0, 2, (int((~mask).sum()),), generator=g).float()  # noise the mask must hide
        out.append((logits, labels, mask))
    return out


@pytest.fixture(scope="module")
def streamed():
    steps = _steps()
    metrics = StreamingTaskMetrics([f"t{i}" for i in range(T)], B, window_rows=WINDOW_STEPS * B)
    for logits, labels, mask in steps:
        metrics.update(logits, labels, mask)
    return steps, metrics.compute()


def _exact(steps):
    return task_metrics(torch.cat([s[0] for s in steps]), torch.cat([s[1] for s in steps]),
                        torch.cat([s[2] for s in steps]), from_logits=True)


def test_lifetime_ne_log_loss_and_calibration_equal_the_exact_offline_values(streamed):
    steps, values = streamed
    exact = _exact(steps)
    np.testing.assert_allclose(values["ne_lifetime"].numpy(), exact.ne, rtol=1e-6)
    np.testing.assert_allclose(values["logloss_lifetime"].numpy(), exact.logloss, rtol=1e-6)  # nats, not bits
    np.testing.assert_allclose(values["calibration_lifetime"].numpy(), exact.calibration, rtol=1e-5)


def test_window_values_cover_exactly_the_last_window_rows(streamed):
    steps, values = streamed
    last = _exact(steps[-WINDOW_STEPS:])
    np.testing.assert_allclose(values["ne"].numpy(), last.ne, rtol=1e-6)
    np.testing.assert_allclose(values["calibration"].numpy(), last.calibration, rtol=1e-5)
    np.testing.assert_allclose(values["auc"].numpy(), last.auc, atol=1e-5)  # no tied scores here
    assert not np.allclose(values["ne"].numpy(), values["ne_lifetime"].numpy())


def test_unlabelled_rows_do_not_count(streamed):
    """Labels under mask=False are noise: dropping those rows must not change any value."""
    steps, values = streamed
    t = 2
    keep = [(lg[m[:, t]][:, t:t + 1], lb[m[:, t]][:, t:t + 1]) for lg, lb, m in steps]
    only = task_metrics(torch.cat([k[0] for k in keep]), torch.cat([k[1] for k in keep]), from_logits=True)
    assert values["ne_lifetime"][t].item() == pytest.approx(float(only.ne[0]), rel=1e-6)


def test_window_smaller_than_a_global_batch_is_refused():
    with pytest.raises(ValueError, match="auc_window_rows .* must be at least one global batch"):
        StreamingTaskMetrics(["a"], 512, window_rows=10_000, auc_window_rows=600, world_size=2)


def test_lifetime_values_continue_from_a_state_dict_and_windows_start_empty():
    """What a checkpoint keeps: a fresh instance loaded from the state after 8 steps, fed the last 4, ends with the
    lifetime values of one that saw all 12; its window holds only the 4 it saw."""
    steps, names = _steps(), [f"t{i}" for i in range(T)]
    first = StreamingTaskMetrics(names, B, window_rows=2 * WINDOW_STEPS * B)
    for s in steps[:8]:
        first.update(*s)
    resumed = StreamingTaskMetrics(names, B, window_rows=2 * WINDOW_STEPS * B)
    resumed.load_state_dict(first.state_dict())
    for s in steps[8:]:
        resumed.update(*s)
    values, exact = resumed.compute(), _exact(steps)
    np.testing.assert_allclose(values["ne_lifetime"].numpy(), exact.ne, rtol=1e-6)
    np.testing.assert_allclose(values["calibration_lifetime"].numpy(), exact.calibration, rtol=1e-5)
    np.testing.assert_allclose(values["ne"].numpy(), _exact(steps[8:]).ne, rtol=1e-6)


def test_values_without_the_rows_they_need_are_nan_not_torchrecs_placeholders():
    """TorchRec gives NE ~1e10, calibration 0 and AUC 0.5 for a task with one class (or none) in the window."""
    g = torch.Generator().manual_seed(1)
    metrics = StreamingTaskMetrics(["mixed", "all_positive", "unlabelled", "no_recent_positive"], B,
                                   window_rows=2 * B, auc_window_rows=B)
    for i in range(5):
        logits = torch.randn(B, 4, generator=g)
        labels = (torch.rand(B, 4, generator=g) < 0.3).float()
        labels[:, 1] = 1
        if i >= 3:
            labels[:, 3] = 0  # positives only before the window
        mask = torch.ones(B, 4, dtype=torch.bool)
        mask[:, 2] = False
        metrics.update(logits, labels, mask)
    v = {k: [not np.isnan(x) for x in t.tolist()] for k, t in metrics.compute().items()}
    assert v["ne"] == v["auc"] == [True, False, False, False]
    assert v["ne_lifetime"] == [True, False, False, True]
    assert v["logloss"] == v["logloss_lifetime"] == v["calibration_lifetime"] == [True, True, False, True]
    assert v["calibration"] == [True, True, False, False]
