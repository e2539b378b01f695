"""StarvationMonitor: device-side counters, a warning naming the task once it starves for `patience` steps."""

import logging
import warnings

import pytest
import torch

from recsys_mtl.weighting import GO4Align, StarvationMonitor, StarvingTaskWarning

NAMES = ["click", "like", "share"]


def test_warns_naming_the_task_after_patience_steps_below_threshold(caplog):
    mon = StarvationMonitor(NAMES, threshold=0.1, patience=3)
    for _ in range(2):
        mon.update(torch.tensor([1.0, 0.05, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mon.check() == []
    mon.update(torch.tensor([1.0, 0.05, 1.0]))
    with caplog.at_level(logging.WARNING), pytest.warns(StarvingTaskWarning, match=r"task 'like' is starving: .* below 0.1 for 3 steps"):
        assert mon.check() == ["like"]
    assert "like" in caplog.text


def test_warns_once_per_episode_and_again_after_recovery():
    mon = StarvationMonitor(NAMES, threshold=0.1, patience=1)
    mon.update(torch.tensor([0.0, 1.0, 1.0]))
    with pytest.warns(StarvingTaskWarning):
        mon.check()
    mon.update(torch.tensor([0.0, 1.0, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mon.check() == ["click"]  # still starving, no second warning
    mon.update(torch.tensor([0.5, 1.0, 1.0]))
    mon.update(torch.tensor([0.0, 1.0, 1.0]))
    with pytest.warns(StarvingTaskWarning, match="click"):
        mon.check()


def test_absent_steps_neither_count_nor_reset():
    mon = StarvationMonitor(NAMES, threshold=0.1, patience=2)
    mon.update(torch.tensor([1.0, 0.0, 1.0]))
    mon.update(torch.tensor([1.0, 0.0, 1.0]), present=torch.tensor([True, False, True]))
    assert mon.steps_below.tolist() == [0, 1, 0]
    mon.update(torch.tensor([1.0, 0.0, 1.0]))
    assert mon.steps_below.tolist() == [0, 2, 0]


def test_counters_live_in_state_dict_and_follow_a_weighting_method():
    m = GO4Align(3, num_groups=3, beta=0.0)
    mon = StarvationMonitor(NAMES, threshold=0.5, patience=2)
    for _ in range(2):
        mon.update(m(torch.tensor([0.1, 10.0, 0.1])), m.last_present)  # 'like' gets a tiny weight
    assert set(mon.state_dict()) == {"steps_below", "warned"}
    with pytest.warns(StarvingTaskWarning, match="like"):
        assert mon.check() == ["like"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task_names=[], threshold=0.1, patience=2), r"task_names must be a non-empty list of non-empty strings"),
        (dict(task_names=NAMES, threshold=-0.1, patience=2), r"StarvationMonitor: threshold must be a finite number in \[0.0, inf\), got -0.1"),
        (dict(task_names=NAMES, threshold=0.1, patience=0), r"StarvationMonitor: patience must be an integer >= 1, got 0"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StarvationMonitor(**kwargs)
