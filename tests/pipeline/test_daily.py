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


def test_a_date_killed_before_promote_cannot_move_the_alias_off_a_newer_champion(tmp_path, days):
    """Day 2 is accepted and the job dies before promote; day 3 is promoted; day 2's retried promote is refused
    (its gate compared it with version 1), names both versions, and registers nothing, however often retried."""
    config = make_config(tmp_path, days, gate={"guarded_tasks": [], "min_mean_improvement": -1.0, "bootstrap_samples": 20})
    pipeline = DailyPipeline.load(config, echo=lambda *_: None)
    assert pipeline.run("2026-01-01", "2026-01-01")[0].version == "1"
    for step in ("train", "evaluate", "decide"):
        pipeline.store.put("2026-01-02", step, getattr(pipeline, f"_step_{step}")("2026-01-02"))
    assert pipeline.store.get("2026-01-02", "decide")["accepted"]  # then the job died
    (day3,) = pipeline.run("2026-01-03", "2026-01-03")
    assert day3.version == "2"
    before = registry_state(pipeline)
    for _ in range(2):
        (day2,) = DailyPipeline.load(config, echo=lambda *_: None).run("2026-01-02", "2026-01-02")
        assert day2.decision == "rejected" and day2.version is None
        assert day2.reason == ("promote refused: this candidate was compared with champion version 1, and the "
                               "champion is now version 2")
        assert registry_state(pipeline) == before  # alias on version 2, no version for day 2
    run = pipeline._registry().client.get_run(pipeline.store.get("2026-01-02", "train")["run_id"])
    assert run.data.tags["recsys_mtl.pipeline.decision"] == "rejected"


def test_a_promote_that_died_after_registering_completes_on_retry_with_one_version(tmp_path, days):
    config = make_config(tmp_path, days, gate={"guarded_tasks": [], "min_mean_improvement": -1.0, "bootstrap_samples": 20})
    pipeline = DailyPipeline.load(config, echo=lambda *_: None)
    for step in ("train", "evaluate", "decide"):
        pipeline.store.put("2026-01-01", step, getattr(pipeline, f"_step_{step}")("2026-01-01"))
    train = pipeline.store.get("2026-01-01", "train")
    registry = pipeline._registry()
    registry.promote(registry.register(train["run_id"], source=train["model_dir"], checkpoint=train["model_dir"],
                                       date="2026-01-01"))  # the alias moved, then the job died before the record
    (day1,) = DailyPipeline.load(config, echo=lambda *_: None).run("2026-01-01", "2026-01-01")
    assert day1.decision == "accepted" and day1.version == "1"
    assert registry_state(pipeline)[:2] == ([1], "1")


KILL_IN_TRAINING = """
import os, signal, sys
from recsys_mtl.tracking.callback import TrackingCallback
from recsys_mtl.pipeline.daily import DailyPipeline

def on_log(self, trainer, records):  # a real kill -9 mid-training, before any checkpoint
    os.kill(os.getpid(), signal.SIGKILL)

TrackingCallback.on_log = on_log
DailyPipeline.load(sys.argv[1], echo=lambda *_: None).run("2026-01-01", "2026-01-01")
"""


def test_a_retry_after_kill_9_marks_the_killed_attempts_run_killed(tmp_path, days):
    import os
    import signal
    import subprocess
    import sys

    config = make_config(tmp_path, days, train_overrides=[
        "data.batch_size=256", "train.progress_bar=false", "model.mmoe.expert_hidden=[16]", "train.log_every=2"])
    proc = subprocess.run([sys.executable, "-c", KILL_IN_TRAINING, str(config)], cwd=tmp_path, capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    pipeline = DailyPipeline.load(config, echo=lambda *_: None)
    client = pipeline._registry().client
    experiment = client.get_experiment_by_name("test-daily").experiment_id
    (orphan,) = client.search_runs([experiment])
    assert orphan.info.status == "RUNNING"
    (day1,) = pipeline.run("2026-01-01", "2026-01-01")
    assert day1.decision == "accepted"
    status = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    assert status.pop(orphan.info.run_id) == "KILLED"
    assert list(status.values()) == ["FINISHED"]


def test_a_damaged_state_file_is_one_line_naming_it_and_what_to_do(tmp_path, days, capsys):
    from recsys_mtl.cli import main

    config = make_config(tmp_path, days)
    pipeline = DailyPipeline.load(config, echo=lambda *_: None)
    state = tmp_path / "work" / "state" / "2026-01-01" / "train.json"
    for damage in (b'{"run_id": "ab', b"\xff\xfe", b"[1, 2]"):
        pipeline.store.put("2026-01-01", "train", {"run_id": "x"})
        state.write_bytes(damage)  # a copy cut short, a disk error, an edit
        assert main(["pipeline", "status", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"recsys-mtl: error: {state}: pipeline state file is damaged (") and "\n" not in err
        assert err.endswith("delete it to run the train step of 2026-01-01 again (or restore it from a backup)")


@pytest.mark.parametrize("click, like, accepted", [
    (0.051, -0.2, False),  # a guarded task past tolerance: rejected, however much the mean improves
    (0.049, -0.2, True),  # within tolerance
    (-0.2, 0.1, True),  # an unguarded task may get worse
])
def test_the_gate_rejects_a_guarded_task_past_its_tolerance(click, like, accepted):
    from recsys_mtl.pipeline.config import GateConfig
    from recsys_mtl.pipeline.gate import decide

    gate = GateConfig(guarded_tasks=["click"], tolerance=0.05)
    decision = decide(["click", "like"], [click, like], (click + like) / 2, gate)
    assert decision.accepted == accepted
    if not accepted:
        assert decision.reason == f"guarded task(s) worse than tolerance 5.0000%: click {click:+.4%}"


def test_pipeline_paths_are_relative_to_the_config_file(tmp_path, days, monkeypatch):
    """A config in its own folder names the data, the train config and the work folder relative to itself; it
    loads the same from any working directory, and a missing train config is named by its key."""
    from recsys_mtl.config.loader import ConfigError

    conf_dir = tmp_path / "pipelines"
    conf_dir.mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text((REPO / "configs" / "pipeline_daily.yaml").read_text())
    (tmp_path / "data").symlink_to(days)
    raw = yaml.safe_load(make_config(tmp_path, days).read_text())
    raw.update(data=["../data"], train_config="../configs/base.yaml", work_dir="../work")
    (conf_dir / "daily.yaml").write_text(yaml.safe_dump(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pipeline = DailyPipeline.load(conf_dir / "daily.yaml", echo=lambda *_: None)
    assert Path(pipeline.config.train_config) == tmp_path / "configs" / "base.yaml"
    assert Path(pipeline.config.work_dir) == tmp_path / "work"
    assert list(pipeline.partitions) == sorted(p.name.removeprefix("date=") for p in days.glob("date=*"))

    raw["train_config"] = "../configs/missing.yaml"
    (conf_dir / "daily.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"daily.yaml: train_config: .*configs/missing.yaml: no such file"):
        DailyPipeline.load(conf_dir / "daily.yaml", echo=lambda *_: None)


@pytest.mark.parametrize("name", ["daily.yaml", "kuairand_daily.yaml"])
def test_shipped_pipeline_configs_name_files_of_this_checkout(name):
    from recsys_mtl.pipeline.daily import PATH_KEYS

    config = load_yaml(REPO / "pipelines" / name, DailyPipelineConfig, PATH_KEYS)
    assert Path(config.train_config).is_file()
    assert config.spec is None or Path(config.spec).is_file()
    for path in [*config.data, config.work_dir]:
        assert Path(path).is_relative_to(REPO), path
