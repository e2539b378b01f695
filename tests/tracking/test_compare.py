"""`recsys-mtl compare` against a real sqlite store with two runs."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_mtl import cli
from recsys_mtl.metrics.offline import evaluate_predictions
from recsys_mtl.tracking import RunTracker, TrackingConfig

TASKS = ["ctr", "like", "share"]


@pytest.fixture(scope="module")
def _store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, (3000, 3))
    y = (rng.uniform(size=p.shape) < p).astype(np.int64)
    noisy = np.clip(p + rng.normal(0, 0.2, p.shape), 0.01, 0.99)
    ids = []
    for name, pred in (("baseline", noisy), ("better", p)):
        cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="cmp",
                             artifact_location=(tmp_path / "artifacts").as_uri(),
                             system_metrics_interval_s=0, flush_interval_s=0.2)
        with RunTracker.start(cfg, run_name=name, work_dir=tmp_path / name, rank=0) as tracker:
            tracker.log_metrics(100, evaluate_predictions(pred, y, None, TASKS).to_metrics())
        ids.append(tracker.run_id)
    return tmp_path, ids


@pytest.fixture
def store_with_two_runs(_store, monkeypatch):
    monkeypatch.chdir(_store[0])  # compare's default store is ./mlflow.db
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["recsys_mtl.tracking.commands"])  # others live on other branches
    return _store


def test_compare_prints_per_task_table_with_ne_change_against_the_first_run(store_with_two_runs, capsys):
    tmp_path, (base, better) = store_with_two_runs
    assert cli.main(["compare", base, better, "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for col in ("task", "NE", "AUC", "calib", "NE chg % vs first"):
        assert col in header
    for task in TASKS:
        assert task in out
    better_rows = [ln for ln in out.splitlines() if f"better ({better[:8]})" in ln and "(mean)" not in ln]
    assert len(better_rows) == 3 and all(ln.split()[-1].startswith("-") for ln in better_rows)
    assert "ref" in out and (tmp_path / "cmp.png").stat().st_size > 10_000


def test_compare_selects_runs_by_experiment_and_backticked_metric_filter(store_with_two_runs, capsys):
    tmp_path, (base, better) = store_with_two_runs
    code = cli.main(["compare", "--experiment", "cmp", "--filter", "metrics.`eval/ne/ctr` < 2",
                     "--plot", str(tmp_path / "f.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert base[:8] in out and better[:8] in out


def test_compare_with_an_unknown_run_id_is_an_error_not_a_traceback(store_with_two_runs, capsys):
    assert cli.main(["compare", "0" * 32]) == 2
    assert "no run with id" in capsys.readouterr().err


def test_compare_by_experiment_takes_the_newest_runs_and_leaves_out_unevaluated_ones(store_with_two_runs, capsys):
    tmp_path, _ = store_with_two_runs
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, (500, 3))
    y = (rng.uniform(size=p.shape) < p).astype(np.int64)
    ids = {}
    for name in ("old", "mid", "unevaluated"):  # started in this order
        cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="newest",
                             artifact_location=(tmp_path / "artifacts").as_uri(), system_metrics_interval_s=0)
        with RunTracker.start(cfg, run_name=name, work_dir=tmp_path / f"newest-{name}", rank=0) as tracker:
            if name != "unevaluated":
                tracker.log_metrics(100, evaluate_predictions(p, y, None, TASKS).to_metrics())
        ids[name] = tracker.run_id
    assert cli.main(["compare", "--experiment", "newest", "--max-runs", "1"]) == 0
    out, err = capsys.readouterr()
    assert ids["mid"][:8] in out and ids["old"][:8] not in out
    assert "more than 1 matching runs with eval metrics: comparing the newest 1" in err
    assert f"left out 1 run(s) without eval metrics (failed, running, or not evaluated): {ids['unevaluated'][:8]}" in err
    assert cli.main(["compare", "--experiment", "newest", "--max-runs", "2"]) == 0  # the unevaluated one takes no slot
    out, err = capsys.readouterr()
    assert ids["mid"][:8] in out and ids["old"][:8] in out and "comparing the newest" not in err
    assert cli.main(["compare", "--experiment", "newest"]) == 0
    out = capsys.readouterr().out
    assert out.index(ids["old"][:8]) < out.index(ids["mid"][:8])  # oldest first: the reference


def test_compare_shows_the_gauc_an_evaluation_logged(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, (600, 2))
    y = (rng.uniform(size=p.shape) < p).astype(np.int64)
    users = rng.integers(0, 40, 600)
    ids, gaucs = [], []
    for name, pred in (("a", np.clip(p + rng.normal(0, 0.3, p.shape), 0.01, 0.99)), ("b", p)):
        cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="cmp_gauc",
                             artifact_location=(tmp_path / "artifacts").as_uri(),
                             system_metrics_interval_s=0, flush_interval_s=0.2)
        report = evaluate_predictions(pred, y, None, ["ctr", "like"], groups=users, gauc_group="user_id")
        with RunTracker.start(cfg, run_name=name, work_dir=tmp_path / name, rank=0) as tracker:
            tracker.log_metrics(1, report.to_metrics())
        ids.append(tracker.run_id)
        gaucs.append(report.gauc)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["recsys_mtl.tracking.commands"])
    assert cli.main(["compare", *ids]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "GAUC" in lines[0].split()
    assert f"{gaucs[0][0]:.5f}" in lines[1] and f"{gaucs[1][0]:.5f}" in lines[2]  # ctr: run a, then run b
