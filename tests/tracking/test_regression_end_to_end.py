"""Regression heads end to end as a user runs them: `data synth --regression-tasks`, `train` with tracking into a real
sqlite store, `evaluate --baseline`, `compare`; and two gloo processes all-reducing mixed losses."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from recsys_mtl.cli import build_parser, main
from recsys_mtl.evaluate.commands import evaluate

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_tiny.yaml"
BINARY = ["click", "long_view", "like"]
REGRESSION = ["watch_time", "dwell_time"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic
    from recsys_mtl.demo import split_last_day

    root = generate_synthetic(tmp_path_factory.mktemp("regression") / "data",
                              SynthConfig(tasks=3, regression_tasks=2, rows=2048, days=3, seed=5, rows_per_file=512,
                                          row_group_size=128, table_scale=0.0005))
    split_last_day(root)
    return root


def train(data: Path, out: Path, uri: str, *extra: str) -> str:
    sets = [f"data.train_path={data / 'train'}", f"data.eval_path={data / 'eval'}",
            f"data.spec={data / '_feature_spec.yaml'}", f"train.output_dir={out}", "train.epochs=2",
            "tracking.enabled=true", f"tracking.tracking_uri={uri}", "tracking.train_metrics_every_n_steps=4",
            "tracking.flush_interval_s=0.2", "tracking.system_metrics_interval_s=0", "tracking.experiment=regression",
            f"tracking.artifact_location={(out.parent / 'artifacts').as_uri()}", "model.head_bias=prior", *extra]
    assert main(["train", str(CONFIG)] + [f"--set={s}" for s in sets]) == 0
    return (out / "tracking" / "run_id").read_text().strip()


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("regression_runs")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    equal = train(data, root / "equal", uri)
    static = train(data, root / "static", uri, "weighting.method=static", "weighting.args={weights: [1, 1, 1, 0.2, 0.2]}")
    return uri, root, equal, static


def test_training_logs_regression_metrics_by_name_beside_the_binary_ones(runs):
    uri, _, equal, _ = runs
    metrics = MlflowClient(uri).get_run(equal).data.metrics
    for task in REGRESSION:
        for name in ("nmse", "mse", "rmse", "mae", "mae_raw", "count"):
            assert f"eval/{name}/{task}" in metrics, (name, task)
        assert f"eval/ne/{task}" not in metrics and f"eval/auc/{task}" not in metrics
        assert f"train/nmse_lifetime/{task}" in metrics and f"train/mse/{task}" in metrics
        assert np.isfinite(metrics[f"train/loss/{task}"])
    for task in BINARY:
        assert f"eval/ne/{task}" in metrics and f"eval/nmse/{task}" not in metrics
        assert f"train/ne_lifetime/{task}" in metrics and f"train/mse/{task}" not in metrics
    assert "eval/mean_nmse" in metrics and "eval/mean_ne" in metrics
    # 42 steps on 1,365 rows learn little; the heads stay near the label mean's NMSE of 1, where they started
    # (a head at 0 would score (mean^2 + var) / var, above 10 for log1p seconds)
    assert 0.5 < metrics["eval/nmse/watch_time"] < 1.5


def test_regression_heads_start_at_the_mean_of_their_transformed_label(data, tmp_path):
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.config.loader import from_dict, read_yaml
    from recsys_mtl.config.train import TrainConfig, apply_overrides
    from recsys_mtl.data.stream import ParquetStream
    from recsys_mtl.train import Trainer

    raw = read_yaml(CONFIG)
    apply_overrides(raw, [f"data.train_path={data / 'train'}", f"data.spec={data / '_feature_spec.yaml'}",
                          f"train.output_dir={tmp_path}", "model.head_bias=prior"], source="test")
    trainer = Trainer(from_dict(TrainConfig, raw, "test"))
    trainer.init_head_bias(num_batches=4)
    spec = FeatureSpec.load(data / "_feature_spec.yaml")
    batches = list(ParquetStream(data / "train", spec, 64, shuffle=False))[:4]
    labels, mask = torch.cat([b.labels for b in batches]), torch.cat([b.label_mask for b in batches])
    mean = (labels * mask).sum(0) / mask.sum(0)
    bias = trainer.module.model.heads.bias.detach().flatten()
    for t, task in enumerate(spec.tasks):
        expected = mean[t] if task.is_regression else torch.logit(mean[t])
        assert bias[t].item() == pytest.approx(expected.item(), rel=1e-4), task.name
    assert mean[3] > 2.0  # log1p of seconds: the regression bias is far from a logit's range


def test_evaluate_against_a_baseline_reports_nmse_changes_with_intervals(runs, data, tmp_path, capsys):
    uri, _, equal, static = runs
    args = build_parser().parse_args(["evaluate", "--run", static, "--data", str(data / "eval"), "--baseline", equal,
                                      "--tracking-uri", uri, "--n-boot", "50", "--out", str(tmp_path)])
    outcome = evaluate(args)
    table = capsys.readouterr().out
    assert "NE|NMSE" in table and "watch_time (nmse)" in table and "MAE raw" in table
    assert "mean relative NE|NMSE change vs" in table and "(over all tasks)" in table
    c = outcome.report.comparison
    assert np.isfinite(c.rel_ne_change).all() and np.isfinite(c.rel_ne_change_ci).all()
    logged = MlflowClient(uri).get_run(outcome.eval_run).data.metrics
    for task in REGRESSION:
        assert f"eval/rel_nmse_change/{task}" in logged and f"eval/delta_nmse/{task}" in logged
        assert f"eval/nmse/{task}" in logged and f"eval/rel_ne_change/{task}" not in logged
    assert "eval/rel_ne_change/click" in logged and "eval/mean_rel_ne_change" in logged
    assert (tmp_path / "ne_change_vs_baseline.png").stat().st_size > 0


def test_compare_reads_nmse_for_regression_tasks_and_ne_for_binary_ones(runs, capsys, monkeypatch):
    uri, root, equal, static = runs
    monkeypatch.chdir(root)
    assert main(["compare", equal, static, "--tracking-uri", uri, "--plot", str(root / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[2] == "NE|NMSE" and "watch_time (nmse)" in out and "RMSE" in out
    rows = [line for line in out.splitlines() if line.startswith("(mean)")]
    assert len(rows) == 1 and rows[0].split()[-1] not in ("-", "nan")


# ------------------------------------------------------------------------------ two processes


KINDS_REGRESSION = [False, True, False, True]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from recsys_mtl.losses import TaskKinds
    from recsys_mtl.train.train_module import WeightedTaskLoss
    from recsys_mtl.weighting import build_weighting

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        kinds = TaskKinds(torch.tensor(KINDS_REGRESSION), torch.tensor([False, False, False, True]),
                          torch.tensor([1.0, 1.0, 1.0, 0.5]))
        loss = WeightedTaskLoss(build_weighting("equal", 4), world_size=2, process_group=dist.group.WORLD,
                                task_kinds=kinds)
        logits, labels, mask = _rank_batch(rank)
        x = logits.clone().requires_grad_(True)
        total, losses, weights = loss(x, labels, mask)
        global_losses, present = loss.global_losses(logits, labels, mask)
        total.backward()
        torch.save({"losses": losses, "present": present, "global": global_losses, "grad": x.grad},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _rank_batch(rank: int):
    g = torch.Generator().manual_seed(10 + rank)
    logits = torch.randn(16, 4, generator=g) + torch.tensor([0.0, 3.0, 0.0, 3.0])
    binary = (torch.rand(16, 4, generator=g) < 0.3).float()
    watch = torch.log1p(torch.exp(2.5 + torch.randn(16, 4, generator=g)))
    labels = torch.where(torch.tensor(KINDS_REGRESSION), watch, binary)
    mask = torch.rand(16, 4, generator=g) < 0.7
    if rank == 1:
        mask[:, 3] = False  # the huber task is labelled on rank 0 only: present globally all the same
    return logits, labels, mask


def test_two_gloo_processes_all_reduce_mixed_losses_and_presence_to_the_same_values_as_one_process():
    from recsys_mtl.losses import TaskKinds, masked_task_loss

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2))
    for key in ("losses", "present", "global"):
        assert torch.equal(r0[key], r1[key]), key
    assert r0["present"].tolist() == [True, True, True, True]
    kinds = TaskKinds(torch.tensor(KINDS_REGRESSION), torch.tensor([False, False, False, True]),
                      torch.tensor([1.0, 1.0, 1.0, 0.5]))
    parts = [_rank_batch(r) for r in range(2)]
    whole = masked_task_loss(*(torch.cat([p[i] for p in parts]) for i in range(3)), kinds)
    torch.testing.assert_close(r0["losses"], whole.losses)  # the global batch's loss, on every rank
    # each rank's gradient is its rows' share of the global loss's gradient (ranks average gradients after)
    x = torch.cat([p[0] for p in parts]).requires_grad_(True)
    masked_task_loss(x, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), kinds).losses.sum().backward()
    torch.testing.assert_close(torch.cat([r0["grad"], r1["grad"]]) / 2, x.grad)
