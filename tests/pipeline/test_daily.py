"""The daily pipeline against a real sqlite MLflow store, real Parquet days and real training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from recsys_mtl.config.loader import load_yaml
from recsys_mtl.data import DataError
from recsys_mtl.pipeline.config import DailyPipelineConfig
from recsys_mtl.pipeline.daily import DailyPipeline, format_summary
from recsys_mtl.pipeline.state import STEPS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    cfg = SynthConfig(tasks=4, rows=16_000, days=4, seed=3, drift=0.2, table_scale=0.001, row_group_size=2048, rows_per_file=4096)
    return generate_synthetic(tmp_path_factory.mktemp("days") / "data", cfg)


def make_config(tmp_path: Path, days: Path, **changes) -> Path:
    cfg = {
        "name": "test-daily",
        "data": [str(days)],
        "train_config": str(REPO / "configs" / "pipeline_daily.yaml"),
        "train_overrides": ["data.batch_size=256", "train.progress_bar=false", "model.mmoe.expert_hidden=[16]"],
        "work_dir": str(tmp_path / "work"),
        "registry": {"model_name": "test-mtl"},
        "gate": {"guarded_tasks": ["click"], "tolerance": 0.05, "bootstrap_samples": 20},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": str(tmp_path / "artifacts"),
                     "experiment": "test-daily"},
    }
    cfg.update(changes)
    path = tmp_path / f"pipeline-{len(list(tmp_path.glob('pipeline-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def registry_state(pipeline: DailyPipeline):
    client = pipeline._registry().client
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'test-mtl'"))
    champion = pipeline._registry().champion()
    runs = client.search_runs([client.get_experiment_by_name("test-daily").experiment_id])
    return versions, champion.version if champion else None, len(runs)


def test_backfill_over_three_days_registers_and_moves_the_champion(tmp_path, days, capsys):
    from recsys_mtl.cli import main

    config = make_config(tmp_path, days)
    assert main(["pipeline", "run", str(config), "--from", "2026-01-01", "--to", "2026-01-03"]) == 0
    out = capsys.readouterr().out
    assert "candidate NE" in out and "2026-01-03" in out and "test-mtl@champion = version" in out
    pipeline = DailyPipeline.load(config)
    outcomes = pipeline.run("2026-01-01", "2026-01-03")
    assert [o.date for o in outcomes] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert outcomes[0].decision == "accepted" and outcomes[0].version == "1"
    versions, champion, runs = registry_state(pipeline)
    accepted = [o for o in outcomes if o.decision == "accepted"]
    assert versions == list(range(1, len(accepted) + 1))
    assert champion == accepted[-1].version and runs == 3
    for o in outcomes[1:]:  # later days were compared with a champion on the same rows
        assert o.champion_ne is not None and o.mean_rel_ne_change is not None
        assert (o.decision == "accepted") == (o.mean_rel_ne_change < 0)
    client = pipeline._registry().client
    run = client.get_run(pipeline.store.get("2026-01-02", "train")["run_id"])
    assert run.data.tags["recsys_mtl.pipeline.decision"] == outcomes[1].decision
    assert "eval/ne/click" in run.data.metrics and "eval/mean_rel_ne_change_vs_champion" in run.data.metrics
    # the gate's figures are the streaming statistics: they agree with the exact in-memory NE of the same rows
    from recsys_mtl.evaluate.loading import load_model
    from recsys_mtl.evaluate.scoring import score_eval_set
    from recsys_mtl.metrics.offline import task_metrics

    record = pipeline.store.get("2026-01-02", "evaluate")
    candidate = load_model(pipeline.store.get("2026-01-02", "train")["model_dir"])
    exact = task_metrics(*score_eval_set(candidate.model, candidate.spec, pipeline.partitions["2026-01-03"], 4096),
                         from_logits=True)
    assert record["candidate_ne"] == pytest.approx(list(exact.ne), rel=1e-5)


def test_rerunning_completed_dates_changes_nothing(tmp_path, days):
    config = make_config(tmp_path, days)
    pipeline = DailyPipeline.load(config, echo=lambda *_: None)
    pipeline.run("2026-01-01", "2026-01-02")
    before = registry_state(pipeline)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "state").rglob("*.json")}
    again = DailyPipeline.load(config, echo=lambda *_: None).run("2026-01-01", "2026-01-02")
    assert [o.ran_steps for o in again] == [[], []]
    assert registry_state(pipeline) == before
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "state").rglob("*.json")} == files


def test_a_failure_mid_pipeline_leaves_the_registry_untouched_and_a_rerun_completes(tmp_path, days):
    config = make_config(tmp_path, days)
    pipeline = DailyPipeline.load(config, echo=lambda *_: None)
    pipeline.run("2026-01-01", "2026-01-01")
    before = registry_state(pipeline)
    # Day 2 trains, then its evaluation data (day 3) turns out corrupt: a real read failure.
    day3 = sorted((days / "date=2026-01-03").glob("*.parquet"))
    saved = {p: p.read_bytes() for p in day3}
    broken = DailyPipeline.load(config, echo=lambda *_: None)
    real_train = broken._step_train

    def train_then_corrupt(date):
        record = real_train(date)
        for p in day3:
            p.write_bytes(b"not parquet" * 10)
        return record

    broken._step_train = train_then_corrupt
    try:
        with pytest.raises(DataError, match="date=2026-01-03"):
            broken.run("2026-01-02", "2026-01-02")
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    versions, champion, runs = registry_state(pipeline)
    assert (versions, champion) == before[:2]  # registry and champion untouched
    assert pipeline.store.get("2026-01-02", "train") is not None
    assert pipeline.store.get("2026-01-02", "evaluate") is None
    resumed = DailyPipeline.load(config, echo=lambda *_: None).run("2026-01-02", "2026-01-02")
    assert resumed[0].ran_steps == ["evaluate", "decide", "promote"]  # picks up at the failed step
    assert registry_state(pipeline)[2] == runs  # no second training run


def test_a_worse_candidate_is_rejected_and_the_run_says_why(tmp_path, days):
    good = make_config(tmp_path, days)
    DailyPipeline.load(good, echo=lambda *_: None).run("2026-01-01", "2026-01-01")
    bad_overrides = ["data.batch_size=256", "train.progress_bar=false", "model.mmoe.expert_hidden=[16]",
                     "optim.dense.lr=3.0", "optim.embedding.lr=5.0"]
    bad = make_config(tmp_path, days, train_overrides=bad_overrides)
    pipeline = DailyPipeline.load(bad, echo=lambda *_: None)
    before = registry_state(pipeline)
    (outcome,) = pipeline.run("2026-01-02", "2026-01-02")
    assert outcome.decision == "rejected" and outcome.mean_rel_ne_change > 0
    assert "not below" in outcome.reason
    assert registry_state(pipeline)[:2] == before[:2]
    run = pipeline._registry().client.get_run(pipeline.store.get("2026-01-02", "train")["run_id"])
    assert run.data.tags["recsys_mtl.pipeline.decision"] == "rejected"
    assert run.data.tags["recsys_mtl.pipeline.reason"] == outcome.reason


def test_bad_date_ranges_are_clear_errors(tmp_path, days):
    from recsys_mtl.config.loader import ConfigError

    pipeline = DailyPipeline.load(make_config(tmp_path, days), echo=lambda *_: None)
    with pytest.raises(ConfigError, match="--to 2026-01-04: the last date has no next day"):
        pipeline.dates_between("2026-01-01", "2026-01-04")
    with pytest.raises(ConfigError, match="--from 2025-12-31: no partition"):
        pipeline.dates_between("2025-12-31", "2026-01-02")
    with pytest.raises(ValueError, match="guarded_tasks names unknown tasks"):
        from recsys_mtl.pipeline.config import GateConfig
        from recsys_mtl.pipeline.gate import decide

        decide(["click"], [0.0], -0.1, GateConfig(guarded_tasks=["clik"]))


def test_a_misspelt_guarded_task_is_refused_before_any_training(tmp_path, days):
    from recsys_mtl.config.loader import ConfigError

    config = make_config(tmp_path, days, gate={"guarded_tasks": ["clik"]})
    with pytest.raises(ConfigError, match=r"gate.guarded_tasks: unknown task\(s\) clik; the feature spec .* has: click"):
        DailyPipeline.load(config, echo=lambda *_: None)
    assert not (tmp_path / "work").exists()


def test_a_retried_older_date_does_not_replace_a_newer_champion(tmp_path, days):
    """Day 2 trains and dies; day 3 is promoted; the retried day 2 was compared with the old champion: rejected.
    Names the pipeline passes as YAML ('2026 #1', a folder with '#') arrive intact."""
    work = tmp_path / "work #1"
    config = make_config(tmp_path, days, work_dir=str(work),
                         gate={"guarded_tasks": [], "min_mean_improvement": -1.0, "bootstrap_samples": 20},
                         tracking={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                   "artifact_location": str(tmp_path / "artifacts"), "experiment": "2026 #1"})
    pipeline = DailyPipeline.load(config, echo=lambda *_: None)
    assert pipeline.run("2026-01-01", "2026-01-01")[0].version == "1"
    pipeline.store.put("2026-01-02", "train", pipeline._step_train("2026-01-02"))  # then the job died
    (day3,) = pipeline.run("2026-01-03", "2026-01-03")
    assert day3.decision == "accepted" and day3.version == "2"  # min_mean_improvement -1: anything goes
    (day2,) = pipeline.run("2026-01-02", "2026-01-02")
    assert day2.decision == "rejected" and day2.version is None
    assert day2.reason == "the champion is now version 2, not version 1 that this candidate was trained from and compared with"
    assert pipeline._registry().champion_version() == "2"
    client = pipeline._registry().client
    run = client.get_run(pipeline.store.get("2026-01-02", "train")["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "2026 #1"
    assert (work / "runs" / "2026-01-02" / "checkpoints").is_dir()  # not cut at the '#'


def test_a_candidate_that_predicts_non_finite_values_is_rejected_even_without_a_champion(tmp_path, days):
    pipeline = DailyPipeline.load(make_config(tmp_path, days), echo=lambda *_: None)
    for step in ("train", "evaluate"):
        pipeline.store.put("2026-01-01", step, getattr(pipeline, f"_step_{step}")("2026-01-01"))
    record = pipeline.store.get("2026-01-01", "evaluate")
    assert record["candidate_non_finite"] == 0
    pipeline.store.put("2026-01-01", "evaluate", dict(record, candidate_non_finite=7))  # as a diverged model scores
    (outcome,) = pipeline.run("2026-01-01", "2026-01-01")
    assert outcome.decision == "rejected" and outcome.version is None
    assert outcome.reason == "the candidate predicts 7 non-finite values (NaN/inf) on the eval day: its training diverged"
    assert pipeline._registry().champion_version() is None
