"""GO4Align paper mode against an independent float64 reference (ARCHITECTURE.md, literally) on loss traces."""

import json
from pathlib import Path

import pytest
import torch
from weighting_reference import GO4AlignReference

from recsys_mtl.weighting import GO4Align, build_weighting

TRACE = json.loads((Path(__file__).parent / "data" / "loss_trace_t6.json").read_text())


def _assert_matches_reference(losses, present, num_groups, beta):
    t = len(losses[0])
    module = GO4Align(num_tasks=t, mode="paper", num_groups=num_groups, beta=beta).double()
    ref = GO4AlignReference(t, num_groups, beta)
    for step, (l, p) in enumerate(zip(losses, present)):
        w = module(torch.tensor(l, dtype=torch.float64), torch.tensor(p))
        assert w.dtype == torch.float64
        candidates = ref.step(l, p)
        assert any(w.tolist() == pytest.approx(c, rel=1e-10, abs=1e-12) for c in candidates), (
            f"step {step}: got {w.tolist()}, reference {candidates}"
        )
        state = module.cum_loss.tolist()
        expected = [sum(x[m] for x, q in zip(losses[: step + 1], present[: step + 1]) if q[m]) for m in range(t)]
        assert state == pytest.approx(expected, rel=1e-12)  # only present steps move the state


@pytest.mark.parametrize("num_groups", [1, 2, 3, 6, 9])
def test_matches_reference_on_recorded_trace_with_tasks_dropping_in_and_out(num_groups):
    # beta large enough that the smoothness term visibly matters over 40 steps
    _assert_matches_reference(TRACE["losses"], TRACE["present"], num_groups, beta=0.5)


def test_matches_reference_with_default_beta():
    _assert_matches_reference(TRACE["losses"], TRACE["present"], 2, beta=1e-4)


@pytest.mark.parametrize("num_groups", [1, 2, 4, 7])
def test_matches_reference_with_tied_losses(num_groups):
    g = torch.Generator().manual_seed(3)
    losses, present = [], []
    for step in range(15):
        a, b = torch.rand(2, generator=g).tolist()
        losses.append([a, a, b, a, b, 0.25, 0.25])  # ties within a step and across steps
        present.append([True, True, True, step % 4 != 1, True, step % 2 == 0, True])
    _assert_matches_reference(losses, present, num_groups, beta=0.3)


def test_matches_reference_on_random_trace_with_random_presence():
    g = torch.Generator().manual_seed(11)
    losses = (torch.rand(25, 7, generator=g, dtype=torch.float64) * 2).tolist()
    present = (torch.rand(25, 7, generator=g) < 0.6).tolist()
    _assert_matches_reference(losses, present, 3, beta=0.2)


def test_k1_gives_every_present_task_the_mean_gamma():
    m = GO4Align(num_tasks=4, mode="paper", num_groups=1, beta=0.0).double()
    loss = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    w = m(loss)
    gamma = loss.sum() / loss / 4  # Q_0 = 1/4 with beta = 0
    assert torch.allclose(w, gamma.mean().expand(4))


def test_k_at_least_t_gives_each_task_its_own_gamma():
    m = GO4Align(num_tasks=4, mode="paper", num_groups=6, beta=0.1).double()
    loss = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    w = m(loss)
    gamma = loss.sum() / loss * torch.softmax(-0.1 * loss, 0)
    assert torch.allclose(w, gamma, rtol=1e-14)
    assert m.group.tolist() == [3, 2, 1, 0]


def test_absent_task_gets_weight_zero_no_group_and_its_state_does_not_move():
    m = GO4Align(num_tasks=3, mode="paper", num_groups=2, beta=0.1)
    m(torch.tensor([0.5, 0.7, 0.9]))
    before = m.cum_loss.clone()
    w = m(torch.tensor([0.4, 123.0, 0.6]), torch.tensor([True, False, True]))
    assert w[1] == 0 and m.group[1] == -1
    assert m.cum_loss[1] == before[1]
    assert torch.allclose(m.cum_loss[[0, 2]], before[[0, 2]] + torch.tensor([0.4, 0.6]))


def test_no_present_task_gives_all_zero_weights():
    m = GO4Align(num_tasks=3, mode="paper", num_groups=2)
    w = m(torch.tensor([0.5, 0.7, 0.9]), torch.zeros(3, dtype=torch.bool))
    assert torch.equal(w, torch.zeros(3)) and torch.equal(m.cum_loss, torch.zeros(3))


def test_zero_loss_is_guarded_and_weights_stay_finite():
    w = GO4Align(num_tasks=3, mode="paper", num_groups=2)(torch.tensor([0.0, 0.5, 0.5]))
    assert torch.isfinite(w).all() and (w >= 0).all()
    w = GO4Align(num_tasks=3, mode="paper", num_groups=2, min_loss=0.0)(torch.tensor([0.0, 0.5, 0.5]))
    assert torch.isfinite(w).all() and (w >= 0).all()


def test_a_loss_at_or_below_min_loss_is_left_out_like_an_absent_task():
    """A rare task whose BCE underflows on a batch without positives must not get a huge scale
    (sum(L)/1e-12) that the group centre would spread over its whole group."""
    losses = torch.tensor([1e-30, 0.3, 0.31, 0.9], dtype=torch.float64)
    guarded = GO4Align(num_tasks=4, mode="paper", num_groups=2).double()
    absent = GO4Align(num_tasks=4, mode="paper", num_groups=2).double()
    w = guarded(losses)
    w_absent = absent(losses, torch.tensor([False, True, True, True]))
    assert w[0] == 0 and torch.equal(w, w_absent) and torch.equal(guarded.cum_loss, absent.cum_loss)
    assert w.max() < 10 and guarded.group[0] == -1


def test_float64_module_returns_float64_weights_and_state():
    m = GO4Align(num_tasks=5, mode="paper", num_groups=2, beta=1e-4).double()
    w = m(torch.rand(5, dtype=torch.float64))
    assert w.dtype == torch.float64 and m.cum_loss.dtype == torch.float64


def test_resuming_from_state_dict_continues_the_same_weights():
    losses, present = TRACE["losses"], TRACE["present"]
    full = GO4Align(num_tasks=6, mode="paper", num_groups=2, beta=0.5)
    first = GO4Align(num_tasks=6, mode="paper", num_groups=2, beta=0.5)
    for l, p in zip(losses[:20], present[:20]):
        full(torch.tensor(l), torch.tensor(p))
        first(torch.tensor(l), torch.tensor(p))
    resumed = build_weighting("go4align", 6, num_groups=2, beta=0.5, mode="paper")
    resumed.load_state_dict(first.state_dict())
    assert list(resumed.state_dict()) == ["cum_loss"]  # pinned: old checkpoints keep loading
    for l, p in zip(losses[20:], present[20:]):
        assert torch.equal(full(torch.tensor(l), torch.tensor(p)), resumed(torch.tensor(l), torch.tensor(p)))


def test_tracking_state_and_summary_report_groups_as_tensors():
    m = GO4Align(num_tasks=4, mode="paper", num_groups=2, beta=0.0)
    w = m(torch.tensor([1.0, 1.1, 5.0, 6.0]), torch.tensor([True, True, True, False]))
    state = m.tracking_state()
    assert state["group"].tolist() == [1, 1, 0, -1]
    assert torch.equal(m.last_weights, w)
    s = m.summary()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in s.values())
    assert int(s["num_groups"]) == 2 and int(s["num_present"]) == 3
    assert float(s["min_weight"]) == pytest.approx(float(w[2])) and float(s["max_weight"]) == pytest.approx(float(w[0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_groups=0), r"GO4Align: num_groups must be an integer >= 1, got 0"),
        (dict(num_groups=2.0), r"GO4Align: num_groups must be an integer >= 1, got 2.0"),
        (dict(num_groups=2, beta=-1.0), r"GO4Align: beta must be a finite number in \[0.0, inf\), got -1.0"),
        (dict(num_groups=2, beta=float("nan")), r"GO4Align: beta must be a finite number in \[0.0, inf\), got nan"),
        (dict(mode="fast"), r"GO4Align: mode must be 'rec' or 'paper', got 'fast'"),
        (dict(alpha=1.5), r"GO4Align: alpha must be a finite number in \[0.0, 1.0\], got 1.5"),
        (dict(ema_decay=1.0), r"GO4Align: ema_decay must be a finite number in \[0.0, 1.0\), got 1.0"),
        (dict(max_ratio=0.5), r"GO4Align: max_ratio must be a finite number in \[1.0, inf\), got 0.5"),
        (dict(mode="paper", alpha=0.5), r"GO4Align: alpha applies to mode 'rec' only .*; remove it or set mode: rec"),
        (dict(mode="paper", max_ratio=10), r"GO4Align: max_ratio applies to mode 'rec' only"),
    ],
)
def test_constructor_rejects_bad_arguments_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GO4Align(num_tasks=4, **kwargs)
