"""RunTracker against a real embedded sqlite store."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys_mtl.config.loader import ConfigError, from_dict
from recsys_mtl.tracking import NullTracker, RunTracker, TrackingConfig, TrackingUnavailable, package_versions
from recsys_mtl.tracking.tracker import SPOOL_DIRNAME

TASKS = [f"task{i}" for i in range(8)]


def _config(tmp_path, **kw) -> TrackingConfig:
    kw = {"flush_interval_s": 0.2, "system_metrics_interval_s": 0.5, **kw}
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          artifact_location=(tmp_path / "artifacts").as_uri(), **kw)


def test_params_tags_metrics_and_artifacts_read_back_from_sqlite(tmp_path):
    spec = tmp_path / "features.yaml"
    spec.write_text("tasks: [ctr]\n")
    run_cfg = {"model": {"arch": "mmoe", "experts": 4}, "optim": {"lr": 0.01}}
    with RunTracker.start(_config(tmp_path), run_name="unit", config_obj=run_cfg, params={"seed": 7},
                          tags={"data.fingerprint": "sha256:abc"}, artifacts=[spec], work_dir=tmp_path / "work",
                          rank=0) as tracker:
        for step in range(20):
            tracker.log_vector(step, "train/loss", TASKS, torch.arange(8.0) + step)
            tracker.log_vector(step, "train/weight", TASKS, torch.full((8,), 0.5))
            tracker.log_vector(step, "train/group", TASKS, torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))
            tracker.log_metrics(step, {"train/loss_total": torch.tensor(float(step)), "train/lr": 0.01})
        tracker.log_metrics(20, {"eval/ne/task0": 0.81})
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model.arch": "mmoe", "model.experts": "4", "optim.lr": "0.01", "seed": "7"}
    assert run.data.tags["data.fingerprint"] == "sha256:abc"  # explicit tags override provenance
    assert len(run.data.tags["git.commit"]) == 40  # provenance tags are always set
    assert run.data.tags["version.torch"] == package_versions()["torch"] != "not installed"
    history = client.get_metric_history(tracker.run_id, "train/loss/task3")
    assert sorted((m.step, m.value) for m in history) == [(s, 3.0 + s) for s in range(20)]
    assert len(client.get_metric_history(tracker.run_id, "train/weight/task7")) == 20
    assert run.data.metrics["eval/ne/task0"] == pytest.approx(0.81)
    assert "system/rss_mb" in run.data.metrics and "system/cpu_percent" in run.data.metrics
    top = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"config.yaml", "features.yaml", "plots"} <= top
    plots = {a.path for a in client.list_artifacts(tracker.run_id, "plots")}
    assert plots == {"plots/train_weight.png", "plots/train_group.png"}
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert not (tmp_path / "work" / SPOOL_DIRNAME / f"{tracker.run_id}.jsonl").exists()


def test_rank_other_than_zero_gets_a_null_tracker_that_writes_nothing(tmp_path):
    tracker = RunTracker.start(_config(tmp_path), run_name="r1", work_dir=tmp_path, rank=1)
    assert isinstance(tracker, NullTracker) and not isinstance(tracker, RunTracker)
    tracker.log_metrics(0, {"a": 1.0})
    tracker.close()
    assert not (tmp_path / "mlflow.db").exists()


def test_default_store_is_sqlite_mlflow_db_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig()
    assert cfg.resolved_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert cfg.resolved_artifact_location() == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert TrackingConfig(tracking_uri="http://127.0.0.1:5000").resolved_artifact_location() is None


def test_tracking_config_rejects_batches_above_mlflow_limit():
    with pytest.raises(ConfigError, match="max_metrics_per_batch: must be between 1 and 1000"):
        from_dict(TrackingConfig, {"max_metrics_per_batch": 5000}, "run.yaml")
    with pytest.raises(ConfigError, match="did you mean 'tracking_uri'"):
        from_dict(TrackingConfig, {"tracking_url": "x"}, "run.yaml")


def test_unreachable_store_at_start_raises_tracking_unavailable(tmp_path):
    from tests.tracking.conftest import free_port

    cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}", http_timeout_s=2)
    with pytest.raises(TrackingUnavailable, match="cannot create an MLflow run"):
        RunTracker.start(cfg, run_name="x", work_dir=tmp_path, rank=0)


def test_metrics_spooled_during_an_outage_are_uploaded_by_flush_spool(tmp_path, monkeypatch, capsys):
    from recsys_mtl.tracking import commands, spool

    cfg = _config(tmp_path, close_timeout_s=0.5, retry_initial_s=0.1)
    tracker = RunTracker.start(cfg, run_name="outage", work_dir=tmp_path / "work", rank=0)
    tracker.flush(timeout=30)

    def store_down(client, record):
        raise ConnectionError("store down (simulated)")

    monkeypatch.setattr(spool, "deliver_record", store_down)
    for step in range(30):
        tracker.log_vector(step, "train/loss", TASKS, torch.rand(8))
    tracker.close()
    spool_file = tmp_path / "work" / SPOOL_DIRNAME / f"{tracker.run_id}.jsonl"
    records = [json.loads(line) for line in spool_file.read_text().splitlines()]
    spooled = [m for r in records for m in r.get("metrics", []) if m[0].startswith("train/loss/")]
    assert len(spooled) == 30 * 8
    assert records[-1]["terminate"] == "FINISHED"
    monkeypatch.undo()

    import argparse

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["tracking", "flush-spool", str(spool_file.parent)])
    assert args.func(args) == 0
    assert "uploaded" in capsys.readouterr().out
    assert not spool_file.exists()
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    assert len(client.get_metric_history(tracker.run_id, "train/loss/task5")) == 30
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_200_metrics_a_step_for_100_steps_all_arrive(tmp_path):
    # What the enqueue costs the training thread is measured by `recsys-mtl bench tracking` (tracking
    # callbacks' ms per step, side by side with tracking off), not timed here.
    tracker = RunTracker.start(_config(tmp_path, system_metrics_interval_s=0), run_name="volume",
                               work_dir=tmp_path / "work", rank=0)
    names = [f"t{i}" for i in range(64)]
    losses, weights, groups = torch.rand(64), torch.rand(64), torch.randint(0, 4, (64,))
    scalars = {f"train/extra_{i}": float(i) for i in range(8)}
    for step in range(100):
        tracker.log_vector(step, "train/loss", names, losses)  # 3 x 64 + 8 = 200 metrics a step
        tracker.log_vector(step, "train/weight", names, weights)
        tracker.log_vector(step, "train/group", names, groups)
        tracker.log_metrics(step, scalars)
    tracker.close()
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    history = client.get_metric_history(tracker.run_id, "train/group/t3")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(100))
    assert {m.value for m in history} == {float(groups[3])}
    assert len(client.get_metric_history(tracker.run_id, "train/extra_7")) == 100


def test_an_invalid_metric_name_is_dropped_alone_and_the_rest_of_the_batch_arrives(tmp_path, caplog):
    with RunTracker.start(_config(tmp_path, system_metrics_interval_s=0), run_name="names",
                          work_dir=tmp_path / "work", rank=0) as tracker:
        tracker.log_metrics(0, {"train/ok": 1.0, "train/bad!name": 2.0})
        tracker.log_vector(0, "train/loss", ["good", "bad?"], torch.tensor([3.0, 4.0]))
    run = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id)
    assert run.data.metrics == {"train/ok": 1.0, "train/loss/good": 3.0}
    assert "'train/bad!name' is not valid" in caplog.text
    assert not tracker.spool_path.with_name(tracker.spool_path.name + ".rejected").exists()


def test_continue_run_reopens_it_keeps_first_params_and_plots_the_history_up_to_the_resume_step(tmp_path, caplog):
    cfg, work = _config(tmp_path, system_metrics_interval_s=0), tmp_path / "work"
    spec = tmp_path / "features.yaml"
    spec.write_text("tasks: [ctr]\n")
    with RunTracker.start(cfg, run_name="first", config_obj={"train": {"epochs": 2, "resume": False}},
                          artifacts=[spec], work_dir=work, rank=0) as first:
        for step in range(1, 11):  # the interrupted process got to step 10; its checkpoint is at step 6
            first.log_vector(step, "train/weight", TASKS, torch.full((8,), float(step)))
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    client.update_run(first.run_id, status="RUNNING")  # what a killed process leaves behind

    with RunTracker.start(cfg, run_name="ignored", config_obj={"train": {"epochs": 4, "resume": True}, "new": 1},
                          artifacts=[spec], work_dir=work, rank=0, continue_run_id=first.run_id,
                          resumed_at_step=6) as tracker:
        assert tracker.run_id == first.run_id and tracker.resumed_at_step == 6
        assert client.get_run(tracker.run_id).info.status == "RUNNING"
        for step in range(7, 13):
            tracker.log_vector(step, "train/weight", TASKS, torch.full((8,), 100.0 + step))
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.params == {"train.epochs": "2", "train.resume": "False", "new": "1"}  # first values kept
    assert run.data.tags["recsys_mtl.resumed_at_steps"] == "6"
    assert run.data.tags["recsys_mtl.resume.step-6.changed_params"].splitlines() == [
        "train.epochs: 2 -> 4", "train.resume: False -> True"]
    assert {"config.yaml", "features.yaml", "resumes/step-6/config.yaml", "resumes/step-6/features.yaml"} <= {
        f.path for d in ("", "resumes/step-6") for f in client.list_artifacts(first.run_id, d or None)}
    # the plot's history: the store's steps up to the resume, then this process's (no step twice)
    hist = tracker._histories["train/weight"]
    assert hist.steps == list(range(1, 13))
    assert [row[0] for row in hist.rows] == [float(s) for s in range(1, 7)] + [100.0 + s for s in range(7, 13)]
    # the metric history has every step once: a resumed run does not log again a step the store already holds
    # (issue 21 item 2), so steps 7-10 keep the interrupted process's values and 11-12 are the resumed one's
    values = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "train/weight/task0"))
    assert [s for s, _ in values] == list(range(1, 13))
    assert [v for s, v in values if s in (8, 11)] == [8.0, 111.0]


def test_continue_run_starts_a_new_run_when_the_old_one_is_gone_or_elsewhere(tmp_path, caplog):
    cfg, work = _config(tmp_path, system_metrics_interval_s=0), tmp_path / "work"
    with RunTracker.start(cfg, run_name="old", work_dir=work, rank=0) as old:
        pass
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    client.delete_run(old.run_id)
    with RunTracker.start(cfg, run_name="fresh", work_dir=work, rank=0, continue_run_id=old.run_id,
                          resumed_at_step=3) as fresh:
        assert fresh.run_id != old.run_id and fresh.resumed_at_step is None
    assert "cannot continue MLflow run" in caplog.text and "it was deleted" in caplog.text
    with RunTracker.start(cfg, run_name="fresh2", work_dir=work, rank=0, continue_run_id="0" * 32,
                          resumed_at_step=3) as fresh2:
        assert fresh2.run_id not in (old.run_id, "0" * 32)
    assert "not in this store" in caplog.text
    other = TrackingConfig(**{**cfg.__dict__, "experiment": "other"})
    with RunTracker.start(other, run_name="moved", work_dir=work, rank=0, continue_run_id=fresh.run_id,
                          resumed_at_step=3) as moved:
        assert moved.run_id != fresh.run_id
    assert "belongs to experiment id" in caplog.text
    assert client.get_run(fresh.run_id).data.tags.get("recsys_mtl.resumed_at_steps") is None


def test_an_earlier_runs_spool_for_an_unreachable_http_store_does_not_hold_up_the_start(tmp_path):
    """MLflow's own HTTP retries (7, with backoff) held RunTracker.start for minutes on such a spool when this run's
    store is sqlite. A fresh process, so that no earlier test has set MLflow's retry settings."""
    import os
    import subprocess
    import sys

    spool_dir = tmp_path / "work" / SPOOL_DIRNAME
    spool_dir.mkdir(parents=True)
    (spool_dir / "abc.jsonl").write_text(json.dumps(
        {"tracking_uri": "http://127.0.0.1:9", "run_id": "abc", "metrics": [["x", 1.0, 1, 0]]}) + "\n")
    uri, work = f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "work")
    script = ("from recsys_mtl.tracking import RunTracker, TrackingConfig\n"
              f"cfg = TrackingConfig(tracking_uri={uri!r}, system_metrics_interval_s=0)\n"
              f"RunTracker.start(cfg, run_name='x', work_dir={work!r}, rank=0).close()\n"
              "print('started')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stderr[-2000:]
    assert (spool_dir / "abc.jsonl").exists()  # still undelivered: kept for later
