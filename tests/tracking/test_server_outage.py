"""A real `mlflow server` hangs (SIGSTOP), dies (SIGKILL) and is restarted mid-run: nothing is lost, no call blocks."""

from __future__ import annotations

import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys_mtl.tracking import RunTracker, TrackingConfig

TASKS = [f"task{i}" for i in range(16)]


def _log_step(tracker, step):
    t0 = time.perf_counter()
    tracker.log_vector(step, "train/loss", TASKS, torch.rand(16))
    tracker.log_vector(step, "train/weight", TASKS, torch.rand(16))
    tracker.log_metrics(step, {"train/loss_total": float(step)})
    return time.perf_counter() - t0


@pytest.mark.slow
def test_server_stopped_and_restarted_mid_run_loses_no_metric_and_never_blocks_the_caller(mlflow_server, tmp_path):
    cfg = TrackingConfig(tracking_uri=mlflow_server.url, flush_interval_s=0.2, retry_initial_s=0.2,
                         retry_max_s=1.0, close_timeout_s=90, http_timeout_s=5, system_metrics_interval_s=0)
    try:
        _outage_run(mlflow_server, cfg, tmp_path)
    finally:
        mlflow_server.ensure_running()  # the server is shared by the session's other tests


def _outage_run(mlflow_server, cfg, tmp_path):
    tracker = RunTracker.start(cfg, run_name="outage", params={"seed": 1}, work_dir=tmp_path, rank=0)
    for step in range(0, 20):
        _log_step(tracker, step)
    assert tracker.flush(timeout=60), "server up: everything should be delivered"

    # A hung server first: a caller that waited on it would block for http_timeout_s (5 s) per request.
    mlflow_server.freeze()
    worst = 0.0
    for step in range(20, 60):
        worst = max(worst, _log_step(tracker, step))
        time.sleep(0.01)
    tracker.flush(timeout=30)  # the thread has timed out on the hung server by now
    assert tracker.spool_path.exists(), "undelivered batches must be spooled to disk during the outage"
    # the bound is 10x under one blocked request and ~100x over a queue put, so load cannot flip it
    assert worst < 0.1 * cfg.http_timeout_s, f"a log call blocked {worst * 1e3:.1f} ms while the server hung"

    mlflow_server.stop()   # then dead (SIGKILL), and back on the same port and backend store
    mlflow_server.start()
    for step in range(60, 80):
        _log_step(tracker, step)
    tracker.close()

    assert not tracker.spool_path.exists(), "the spool is uploaded once the server is back"
    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"seed": "1"}
    for name in ["train/loss_total"] + [f"train/{kind}/{t}" for kind in ("loss", "weight") for t in TASKS]:
        steps = sorted(m.step for m in client.get_metric_history(tracker.run_id, name))
        assert steps == list(range(80)), f"{name}: missing steps {sorted(set(range(80)) - set(steps))}"
