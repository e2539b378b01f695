"""GO4Align's rec mode: its properties (issue 26, item 7), the paper mode's collapse on a rare task that rec
mode avoids, the label statistics it starts from, the paper-mode warning, and checkpoints from before the modes."""

import copy
import logging
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from recsys_mtl.losses import TaskKinds
from recsys_mtl.train import Trainer
from recsys_mtl.train.checkpoint import CheckpointMismatchError
from recsys_mtl.train.train_module import WeightedTaskLoss
from recsys_mtl.weighting import GO4Align, LabelStats, build_weighting, weighting_signature
from recsys_mtl.weighting.go4align import constant_predictor_loss, default_num_groups

from tests.models.batches import ListSource, rank_batches, tiny_spec
from tests.train.helpers import tiny_config

T = 6
BINARY = torch.tensor([True, True, True, True, False, False])


def stream(seed: int, steps: int = 30, p_present: float = 0.8):
    """(losses, present, label stats) per step: binary tasks at rates 0.2%-40%, two regression tasks."""
    g = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.002, 0.02, 0.1, 0.4, 0.0, 0.0], dtype=torch.float64)
    out = []
    for _ in range(steps):
        present = torch.rand(T, generator=g) < p_present
        count = torch.where(present, torch.full((T,), 256.0, dtype=torch.float64), 0.0)
        y = torch.where(BINARY, (torch.rand(256, T, generator=g, dtype=torch.float64) < rates).double(),
                        torch.randn(256, T, generator=g, dtype=torch.float64) * 2 + 3)
        stats = LabelStats(count, y.sum(0) * present, (y * y).sum(0) * present, BINARY)
        losses = torch.rand(T, generator=g, dtype=torch.float64) * torch.tensor([0.02, 0.1, 0.3, 0.7, 4.0, 1.0]) + 0.001
        out.append((losses, present, stats))
    return out


def drive(m: GO4Align, steps) -> torch.Tensor:
    return torch.stack([m(l, p, s) for l, p, s in steps])


def test_equal_risks_are_a_fixed_point_with_equal_weights():
    m = GO4Align(T, num_groups=3, beta=0.05).double()
    stats = LabelStats(*(torch.full((T,), v, dtype=torch.float64) for v in (100.0, 30.0, 30.0)),
                       torch.ones(T, dtype=torch.bool))  # the same rate everywhere: the same starting risk
    for step in range(20):
        w = m(torch.full((T,), 0.3 + 0.01 * step, dtype=torch.float64), None, stats)
        torch.testing.assert_close(w, torch.ones(T, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert (m.risk > 0.5).all()  # the risks moved (from H(0.3) = 0.61 towards the losses), equal throughout


def test_alpha_zero_gives_equal_weights_over_present_tasks():
    for seed in range(3):
        w = drive(GO4Align(T, num_groups=3, beta=0.5, alpha=0.0).double(), steps := stream(seed))
        present = torch.stack([p for _, p, _ in steps])
        assert torch.equal(w, present.double())


def test_a_weight_never_depends_on_the_loss_of_the_batch_it_multiplies():
    steps = stream(1, steps=25)
    m = GO4Align(T, num_groups=3, beta=0.1).double()
    g = torch.Generator().manual_seed(9)
    for losses, present, stats in steps:
        other = copy.deepcopy(m)
        w = m(losses, present, stats)
        w_other = other(torch.rand(T, generator=g, dtype=torch.float64) * 100, present, stats)
        assert torch.equal(w, w_other)
        assert not torch.equal(m.risk_avg, other.risk_avg) or not present.any()  # the losses do enter the state


def test_weights_have_mean_one_and_stay_within_max_ratio_of_the_median_both_ways():
    g = torch.Generator().manual_seed(2)
    for max_ratio in (1.0, 3.0, 10.0):
        m = GO4Align(8, num_groups=8, beta=0.01, alpha=1.0, max_ratio=max_ratio).double()
        for _ in range(30):  # losses over nine decades
            losses = 10.0 ** (torch.rand(8, generator=g, dtype=torch.float64) * 9 - 6)
            present = torch.rand(8, generator=g) < 0.7
            w = m(losses, present)
            if present.sum() == 0:
                continue
            wp = w[present].sort().values
            assert torch.isfinite(w).all() and (w[~present] == 0).all()
            assert float(wp.mean()) == pytest.approx(1.0, rel=1e-12)
            assert float(wp[-1] / wp[(len(wp) - 1) // 2]) <= max_ratio * (1 + 1e-12)
            assert float(wp[(len(wp) - 1) // 2] / wp[0]) <= max_ratio * (1 + 1e-12)


def test_without_the_bound_the_same_stream_exceeds_it():
    """The bound test above can fail: unbounded, these risks give ratios far beyond 3."""
    m = GO4Align(8, num_groups=8, beta=0.01, alpha=1.0, max_ratio=1e9).double()
    w = m(10.0 ** torch.arange(-6.0, 2.0, dtype=torch.float64))
    assert float(w.max() / w.sort().values[3]) > 100


def test_a_high_loss_task_keeps_a_tenth_of_the_median_weight_in_a_long_run():
    """The smoothness term grows with the run: a task whose risk stays far above the others' (a regression head
    among binary ones) alone in its group would go to weight ~0; the floor keeps median / max_ratio. Without the
    floor (max_ratio 1e9) the same stream drives it below 1e-4."""
    losses = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.05, 3.0], dtype=torch.float64)
    for max_ratio, check in ((10.0, lambda w: w[-1] >= w.sort().values[3] / 10 * (1 - 1e-12)),
                             (1e9, lambda w: w[-1] < 1e-4)):
        m = GO4Align(8, num_groups=8, beta=0.05, alpha=0.25, max_ratio=max_ratio).double()
        for _ in range(2000):
            w = m(losses)
        assert check(w), (max_ratio, w)
        assert float(w.mean()) == pytest.approx(1.0, rel=1e-12)


def test_the_floor_leaves_the_weights_bit_for_bit_where_it_does_not_bind():
    m = GO4Align(8, num_groups=3, beta=1e-3).double()
    w = m(torch.linspace(0.1, 0.8, 8, dtype=torch.float64))
    assert float(w.min()) > float(w.sort().values[3]) / 10
    assert torch.equal(m._floor(w, torch.ones(8, dtype=torch.bool)), w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuting_the_tasks_with_their_label_statistics_permutes_the_weights(seed):
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(seed))
    steps = stream(seed)
    permuted = [(l[perm], p[perm], LabelStats(*(v[perm] for v in s))) for l, p, s in steps]
    w = drive(GO4Align(T, num_groups=3, beta=0.2).double(), steps)
    w_perm = drive(GO4Align(T, num_groups=3, beta=0.2).double(), permuted)
    torch.testing.assert_close(w_perm, w[:, perm], rtol=1e-10, atol=1e-12)


def test_resuming_from_a_state_dict_mid_run_gives_identical_weights_and_state():
    steps = stream(3, steps=30)
    full, first = GO4Align(T, num_groups=3, beta=0.1), GO4Align(T, num_groups=3, beta=0.1)
    f32 = [(l.float(), p, LabelStats(*(v.float() for v in s[:3]), s.binary)) for l, p, s in steps]
    drive(full, f32[:17])
    drive(first, f32[:17])
    resumed = build_weighting("go4align", T, num_groups=3, beta=0.1)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(drive(resumed, f32[17:]), drive(full, f32[17:]))
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_an_absent_task_gets_weight_zero_and_none_of_its_state_moves():
    m = GO4Align(T, num_groups=3, beta=0.1).double()
    for losses, _, stats in stream(4, steps=5, p_present=1.1):
        m(losses, None, stats)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    present = torch.tensor([True, False, True, True, False, True])
    count = torch.where(present, 256.0, 0.0).double()
    stats = LabelStats(count, count * 0.3, count * 0.3, BINARY)
    losses = torch.where(present, torch.rand(T, dtype=torch.float64), torch.tensor(float("nan"), dtype=torch.float64))
    w = m(losses, present, stats)
    assert (w[~present] == 0).all() and (w[present] > 0).all()
    for key, value in m.state_dict().items():
        assert torch.equal(value[~present], before[key][~present]), key
        if key != "prior":  # present tasks' statistics moved
            assert not torch.equal(value[present], before[key][present]), key


def test_the_starting_risk_is_the_constant_predictors_loss_of_the_labels_seen():
    m = GO4Align(2, num_groups=1).double()
    g = torch.Generator().manual_seed(5)
    binary = torch.tensor([True, False])
    seen = []
    for step in range(4):
        y = torch.stack([(torch.rand(500, generator=g, dtype=torch.float64) < 0.03).double(),
                         torch.randn(500, generator=g, dtype=torch.float64) * 3 + 100], dim=1)
        m(torch.tensor([0.5, 0.5], dtype=torch.float64), None,
          LabelStats(torch.full((2,), 500.0, dtype=torch.float64), y.sum(0), (y * y).sum(0), binary))
        first = torch.cat(seen) if seen else y
        rate, var = first[:, 0].mean(), first[:, 1].var(unbiased=False)
        h = -(rate * rate.log() + (1 - rate) * (1 - rate).log())
        # step 0 starts at its own labels; later steps at the labels before them, decayed by d^n
        expected = torch.stack([h, var]) * 0.99 ** step + (1 - 0.99 ** step) * 0.5
        torch.testing.assert_close(m.risk, expected, rtol=1e-9, atol=1e-12)
        seen.append(y)


def test_without_label_statistics_a_task_starts_at_its_first_loss():
    m = GO4Align(2, num_groups=2, alpha=1.0, beta=0.0, max_ratio=1e9).double()
    w = m(torch.tensor([0.1, 0.4], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([1.6, 0.4], dtype=torch.float64))  # (0.5/0.1, 0.5/0.4) -> mean 1
    w = m(torch.tensor([9.0, 9.0], dtype=torch.float64))  # lagged: still the first risks
    torch.testing.assert_close(w, torch.tensor([1.6, 0.4], dtype=torch.float64))


def test_constant_predictor_loss_is_entropy_for_binary_and_variance_for_regression():
    out = constant_predictor_loss(torch.tensor([1000.0, 1000.0, 1000.0]), torch.tensor([0.1, 0.0, 5.0]),
                                  torch.tensor([0.0, 0.0, 2000.0]), torch.tensor([True, True, False]))
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert out.tolist() == pytest.approx([h(0.1), h(0.5 / 1001), 2.0], rel=1e-5)


def test_default_num_groups_follows_the_square_root_rule():
    assert [default_num_groups(t) for t in (1, 2, 3, 6, 8, 9, 32, 64)] == [1, 1, 2, 2, 2, 3, 4, 6]
    assert GO4Align(64).num_groups == 6 and GO4Align(64, num_groups=4).num_groups == 4


def _train_rare_logit(mode: str, seed: int, steps: int = 200, batch: int = 512, lr: float = 0.3) -> torch.Tensor:
    """Per-task logits trained by SGD on a stream with a task at 0.2% (about 1 positive per batch),
    started at the base rates, as the trainer's head_bias does. Returns mean prediction / base rate."""
    rates = torch.tensor([0.002, 0.05, 0.3])
    g = torch.Generator().manual_seed(seed)
    logit = torch.logit(rates).clone().requires_grad_(True)
    weighting = GO4Align(3, num_groups=3, mode=mode)
    opt = torch.optim.SGD([logit], lr=lr)
    predictions = []
    for _ in range(steps):
        y = (torch.rand(batch, 3, generator=g) < rates).float()
        losses = F.binary_cross_entropy_with_logits(logit.expand(batch, 3), y, reduction="none").mean(0)
        stats = LabelStats(torch.full((3,), float(batch)), y.sum(0), y.sum(0), torch.ones(3, dtype=torch.bool))
        w = weighting(losses.detach(), None, stats)
        opt.zero_grad()
        (w * losses).sum().backward()
        opt.step()
        predictions.append(torch.sigmoid(logit.detach()))
    return torch.stack(predictions[-50:]).mean(0) / rates


@pytest.mark.parametrize("seed", [0, 1])
def test_paper_mode_collapses_a_rare_task_and_rec_mode_keeps_it_calibrated(seed):
    """Issue 26: weights of 1 / (the batch's loss) minimise E[log L]; on ~1 expected positive per batch the
    rare head is driven to predict 0. Rec mode's lagged risks leave the gradient unbiased."""
    paper = _train_rare_logit("paper", seed)
    rec = _train_rare_logit("rec", seed)
    assert paper[0] < 0.1  # measured 0.015 and 0.030 of the base rate: collapsed
    assert 0.5 <= rec[0] <= 2.0 and ((0.5 <= rec) & (rec <= 2.0)).all()


def _kinds(binary: list[bool]) -> TaskKinds:
    regression = ~torch.tensor(binary)
    return TaskKinds(regression, torch.zeros_like(regression), torch.ones(len(binary)))


def test_weighted_task_loss_all_reduces_the_masked_label_moments():
    """One process: the moments the weighting gets are those of the labelled rows (NaN elsewhere ignored)."""
    seen = []

    class Recording(GO4Align):
        def compute(self, losses, present, label_stats=None):
            seen.append(label_stats)
            return super().compute(losses, present, label_stats)

    labels = torch.tensor([[1.0, 2.0], [0.0, float("nan")], [1.0, 4.0]])
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    task_loss = WeightedTaskLoss(Recording(2), task_kinds=_kinds([True, False]))
    task_loss(torch.zeros(3, 2, requires_grad=True), labels, mask)
    stats = seen[0]
    assert stats.count.tolist() == [2.0, 2.0] and stats.total.tolist() == [1.0, 6.0]
    assert stats.total_sq.tolist() == [1.0, 20.0] and stats.binary.tolist() == [True, False]
    assert task_loss.weighting.prior.tolist() == pytest.approx([-(0.5 * math.log(0.5)) * 2, 1.0])


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.save(_weights_over_steps(rank, 2, dist.group.WORLD), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _weights_over_steps(rank: int, world_size: int, group) -> dict:
    """WeightedTaskLoss with GO4Align rec on this rank's rows of a fixed global batch stream."""
    g = torch.Generator().manual_seed(21)
    task_loss = WeightedTaskLoss(GO4Align(4, num_groups=2, beta=0.1), world_size, group,
                                 task_kinds=_kinds([True, True, True, False]))
    weights = []
    for _ in range(8):
        logits = torch.randn(32, 4, generator=g)
        labels = torch.cat([(torch.rand(32, 3, generator=g) < 0.1).float(), torch.randn(32, 1, generator=g)], 1)
        mask = torch.rand(32, 4, generator=g) < 0.7
        rows = slice(rank * 32 // world_size, (rank + 1) * 32 // world_size)
        _, _, w = task_loss(logits[rows], labels[rows], mask[rows])
        weights.append(w)
    return {"weights": torch.stack(weights), "state": task_loss.weighting.state_dict()}


@pytest.mark.slow
def test_two_gloo_processes_weigh_like_one_process_on_the_whole_batch():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_two_rank_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2))
    single = _weights_over_steps(0, 1, None)
    assert torch.equal(r0["weights"], r1["weights"])
    torch.testing.assert_close(r0["weights"], single["weights"], rtol=1e-5, atol=1e-6)
    for key, value in single["state"].items():
        torch.testing.assert_close(r0["state"][key], value, rtol=1e-5, atol=1e-5)


def test_paper_mode_warns_for_each_task_under_five_expected_positives():
    paper = GO4Align(4, mode="paper")
    msgs = paper.check_task_rates(["click", "buy", "rare_neg", "watch"], [0.2, 0.00095, 0.999, 0.0001], 2048.0,
                                  ["binary", "binary", "binary", "regression"])
    assert len(msgs) == 2
    assert "task 'buy' expects 1.95 positives per global batch (base rate 0.00095 x 2048 labelled rows), below 5" in msgs[0]
    assert "task 'rare_neg' expects 2.05 negatives" in msgs[1]
    assert GO4Align(4).check_task_rates(["a", "b", "c", "d"], [0.001] * 4, 2048.0) == []
    assert build_weighting("equal", 2).check_task_rates(["a", "b"], [1e-6, 1e-6], 10.0) == []


def test_the_trainer_logs_the_paper_mode_warning_before_training(tmp_path, caplog):
    spec = tiny_spec()
    batches = rank_batches(spec, 2, 16, 1, 0)
    cfg = tiny_config(tmp_path, weighting={"method": "go4align", "args": {"mode": "paper"}}, train={"max_steps": 1})
    with caplog.at_level(logging.WARNING):
        Trainer(cfg, spec=spec, train_data=ListSource(batches)).fit()
    warned = [r.getMessage() for r in caplog.records if "GO4Align mode paper" in r.getMessage()]
    labels, mask = torch.cat([b.labels for b in batches]), torch.cat([b.label_mask for b in batches])
    rate, per_batch = (labels * mask).sum(0) / mask.sum(0), mask.sum(0) / len(batches)
    rare = [name for name, r, n in zip(spec.task_names, rate.tolist(), per_batch.tolist()) if min(r, 1 - r) * n < 5]
    assert rare and len(rare) < spec.num_tasks  # the tiny batches have both kinds
    assert [m.split("'")[1] for m in warned] == rare


def test_signature_keeps_paper_as_before_the_modes_and_names_rec():
    assert weighting_signature("go4align", {"num_groups": 2, "mode": "paper"}) == "go4align"
    assert weighting_signature("go4align", {"num_groups": 2}) == "go4align (mode: rec)"
    assert weighting_signature("equal", {}) == "equal"


def test_a_checkpoint_from_before_the_modes_resumes_with_mode_paper_and_is_refused_by_rec(tmp_path):
    """A checkpoint before the modes holds `weighting.cum_loss` and the signature 'go4align': exactly what
    paper mode writes now. Its config (no mode) would now build rec mode: refused with the difference named."""
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    old = {"method": "go4align", "args": {"num_groups": 2}}
    paper = {"method": "go4align", "args": {"num_groups": 2, "mode": "paper"}}
    Trainer(tiny_config(tmp_path, weighting=paper, train={"max_steps": 2, "checkpoint": {"every": 2}}), spec=spec,
            train_data=ListSource(batches)).fit()
    with pytest.raises(CheckpointMismatchError,
                       match=r"weighting: checkpoint has 'go4align', this config has 'go4align \(mode: rec\)'"):
        Trainer(tiny_config(tmp_path, weighting=old), spec=spec, train_data=ListSource(batches)).fit()
    resumed = Trainer(tiny_config(tmp_path, weighting=paper), spec=spec, train_data=ListSource(batches))
    resumed.fit()
    assert resumed.resumed_from_step == 2 and list(resumed.weighting.state_dict()) == ["cum_loss"]
