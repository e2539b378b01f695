"""`recsys-mtl train` with tracking into a real sqlite store, then `recsys-mtl evaluate` on what it logged.

Two tiny runs (GO4Align, registered; equal weights, the baseline) are trained once for the module
in this process; a 2-process run and a run against a real `mlflow server` are launched separately.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
import pytest
from mlflow.tracking import MlflowClient

from recsys_mtl.cli import build_parser, main
from recsys_mtl.evaluate.commands import evaluate

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_tiny.yaml"
TASKS = ["click", "long_view", "like", "follow"]
EVERY = 4  # tracking.train_metrics_every_n_steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 days of 4 tasks: 2 to train on, the last held out (as the demo does)."""
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic
    from recsys_mtl.demo import split_last_day

    root = generate_synthetic(tmp_path_factory.mktemp("tracked") / "data",
                              SynthConfig(tasks=4, rows=1536, days=3, seed=3, rows_per_file=512, row_group_size=128,
                                          table_scale=0.0005))
    split_last_day(root)
    return root


def overrides(data: Path, out: Path, uri: str, artifacts: Path | None, *extra: str) -> list[str]:
    sets = [f"data.train_path={data / 'train'}", f"data.eval_path={data / 'eval'}",
            f"data.spec={data / '_feature_spec.yaml'}", f"train.output_dir={out}", "train.epochs=2",
            "train.log_every=2", "tracking.enabled=true", f"tracking.tracking_uri={uri}",
            f"tracking.train_metrics_every_n_steps={EVERY}", "tracking.flush_interval_s=0.2",
            "tracking.system_metrics_interval_s=1", "tracking.experiment=tiny", *extra]
    if artifacts is not None:
        sets.append(f"tracking.artifact_location={artifacts.as_uri()}")
    return sets


def train_in_process(data: Path, out: Path, uri: str, artifacts: Path | None, *extra: str, register: str | None = None) -> str:
    argv = ["train", str(CONFIG)] + [f"--set={o}" for o in overrides(data, out, uri, artifacts, *extra)]
    if register:
        argv += ["--register-model", register]
    assert main(argv) == 0
    return (out / "tracking" / "run_id").read_text().strip()


@pytest.fixture(scope="module")
def store(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    go4 = train_in_process(data, root / "go4align", uri, root / "artifacts", "weighting.method=go4align",
                           "weighting.args={num_groups: 2}", register="tiny-mtl")
    equal = train_in_process(data, root / "equal", uri, root / "artifacts", "weighting.method=equal")
    return {"root": root, "uri": uri, "client": MlflowClient(uri), "go4align": go4, "equal": equal}


def run_evaluate(*argv: str):
    return evaluate(build_parser().parse_args(["evaluate", *argv]))


def artifact_files(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_files(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def eval_metrics(run, metric: str) -> np.ndarray:
    return np.array([run.data.metrics[f"eval/{metric}/{t}"] for t in TASKS])


def test_tracked_run_has_config_params_provenance_tags_per_task_metrics_plots_and_the_model(store):
    client, run_id = store["client"], store["go4align"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "go4align"
    p = run.data.params
    assert p["weighting.method"] == "go4align" and p["model.architecture"] == "mmoe" and p["world_size"] == "1"
    assert p["tracking.train_metrics_every_n_steps"] == str(EVERY)
    t = run.data.tags
    assert len(t["git.commit"]) == 40 and t["data.fingerprint"].startswith("sha256:") and t["version.torchrec"]
    files = artifact_files(client, run_id)
    ckpt = t["recsys_mtl.checkpoint"]
    assert {"config.yaml", "feature_spec.yaml", "train_log.jsonl", "plots/train_weight.png", "plots/train_group.png",
            "model/config.yaml", "model/feature_spec.yaml", f"model/checkpoint/{ckpt}/.metadata",
            f"model/checkpoint/{ckpt}/model.json", f"model/checkpoint/{ckpt}/__0_0.distcp"} <= files
    for task in TASKS:
        for prefix in ("train/loss", "train/weight", "train/group", "train/gamma"):
            steps = [m.step for m in client.get_metric_history(run_id, f"{prefix}/{task}")]
            assert steps and all(s % EVERY == 0 for s in steps), (prefix, steps)
        # group ids of K=2, or -1 on steps where the task was left out (no label, or loss <= min_loss)
        assert {m.value for m in client.get_metric_history(run_id, f"train/group/{task}")} <= {-1.0, 0.0, 1.0}
        for key in (f"train/ne/{task}", f"train/ne_lifetime/{task}", f"train/auc/{task}",
                    f"train/calibration_lifetime/{task}", f"train/logloss_lifetime/{task}",
                    f"eval/ne/{task}", f"eval/auc/{task}", f"eval/calibration/{task}", f"eval/logloss/{task}"):
            assert np.isfinite(run.data.metrics[key]), key
        assert len(client.get_metric_history(run_id, f"eval/ne/{task}")) == 2  # once per epoch
    assert "system/rss_mb" in run.data.metrics and "train/loss_total" in run.data.metrics


def test_register_model_creates_a_version_whose_source_is_the_runs_model(store):
    client = store["client"]
    versions = client.search_model_versions("name='tiny-mtl'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", store["go4align"])]
    assert versions[0].source.endswith(f"{store['go4align']}/artifacts/model")


def test_evaluate_run_reproduces_the_trainers_final_eval_metrics_and_logs_a_nested_eval_run(store, data, capsys):
    client = store["client"]
    out = run_evaluate("--run", store["go4align"], "--data", str(data / "eval"), "--tracking-uri", store["uri"])
    assert "NE" in capsys.readouterr().out
    trained, evaluated = client.get_run(store["go4align"]), client.get_run(out.eval_run)
    assert evaluated.data.tags["mlflow.parentRunId"] == store["go4align"]
    assert evaluated.data.params["eval.checkpoint"] == trained.data.tags["recsys_mtl.checkpoint"]
    for metric in ("ne", "auc", "logloss"):  # sharded training-time eval vs unsharded reload
        np.testing.assert_allclose(eval_metrics(evaluated, metric), eval_metrics(trained, metric), rtol=1e-5)
    # float32 logits summed in another order: calibration of a task predicted near 0 moves in the 5th digit
    np.testing.assert_allclose(eval_metrics(evaluated, "calibration"), eval_metrics(trained, "calibration"), rtol=1e-4)
    assert {m.step for m in client.get_metric_history(out.eval_run, "eval/ne/click")} == \
        {max(m.step for m in client.get_metric_history(store["go4align"], "eval/ne/click"))}


def test_evaluate_with_baseline_adds_per_task_deltas_with_intervals_and_the_ne_plot(store, data, capsys):
    client = store["client"]
    base = run_evaluate("--run", store["equal"], "--data", str(data / "eval"), "--tracking-uri", store["uri"])
    out = run_evaluate("--run", store["go4align"], "--baseline", store["equal"], "--data", str(data / "eval"),
                       "--tracking-uri", store["uri"], "--n-boot", "50")
    text = capsys.readouterr().out
    assert "dNE [95% CI]" in text and "mean relative NE change vs" in text
    run = client.get_run(out.eval_run)
    assert run.data.tags["recsys_mtl.baseline_run"] == store["equal"]
    delta = np.array([run.data.metrics[f"eval/delta_ne/{t}"] for t in TASKS])
    np.testing.assert_allclose(delta, eval_metrics(run, "ne") - eval_metrics(client.get_run(base.eval_run), "ne"),
                               atol=1e-9)
    assert "eval/mean_rel_ne_change" in run.data.metrics
    assert "plots/ne_change_vs_baseline.png" in artifact_files(client, out.eval_run)
    c = out.report.comparison
    assert np.all(c.delta_ne_ci[:, 0] <= c.delta_ne) and np.all(c.delta_ne <= c.delta_ne_ci[:, 1])


def test_registered_model_uri_and_the_local_checkpoint_load_the_same_model(store, data):
    by_uri = run_evaluate("--run", "models:/tiny-mtl/1", "--data", str(data / "eval"), "--tracking-uri", store["uri"],
                          "--no-log")
    out_dir = store["root"] / "go4align"
    local = run_evaluate("--checkpoint", str(out_dir / "checkpoints"), "--config",
                         str(out_dir / "tracking" / "config.yaml"), "--data", str(data / "eval"), "--no-log")
    np.testing.assert_array_equal(by_uri.report.metrics.ne, local.report.metrics.ne)
    assert by_uri.eval_run is None and local.eval_run is None


def test_evaluate_input_errors_are_one_line_with_exit_code_2(store, data, capsys):
    assert main(["evaluate", "--run", "0" * 32, "--data", str(data / "eval"), "--tracking-uri", store["uri"]]) == 2
    assert "not found in the tracking store" in capsys.readouterr().err
    bare = store["root"] / "equal" / "checkpoints"
    assert main(["evaluate", "--checkpoint", str(bare), "--set", "model.task_tower=[3]", "--data", str(data / "eval"),
                 "--no-log"]) == 2
    err = capsys.readouterr().err
    assert "model.task_tower: checkpoint has [8], this config has [3]" in err and "drop the --set overrides that change the model" in err
    assert main(["evaluate", "--checkpoint", str(bare), "--baseline-set", "model.task_tower=[3]",
                 "--data", str(data / "eval")]) == 2
    assert "describe a --baseline model: give --baseline too" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(bare), "--baseline", str(bare), "--baseline-set", "model.task_tower=[3]",
                 "--data", str(data / "eval"), "--no-log"]) == 2
    printed, err = capsys.readouterr()
    assert "drop the --baseline-set overrides that change the model" in err and "scoring" not in printed


def _env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.mark.slow
def test_two_process_run_logs_from_rank_0_only_and_its_sharded_checkpoint_loads_in_one_process(data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # one table of each forced kind; the others (the mean-pooled tag among them) are left to the planner, which keeps
    # mean-pooled tables off row-wise (recsys_mtl/train/sharding.py, "Mean pooling")
    sets = overrides(data, tmp_path / "out", uri, tmp_path / "artifacts", "data.batch_size=64",
                     "sharding.tables={user: row_wise, city: table_wise, music: column_wise}")
    cmd = [sys.executable, "-m", "recsys_mtl.cli", "train", str(CONFIG), "--nproc=2"] + [f"--set={o}" for o in sets]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "every rank but 0 must log nothing"
    run = runs[0]
    assert run.data.params["world_size"] == "2" and run.info.status == "FINISHED"
    ckpt = run.data.tags["recsys_mtl.checkpoint"]
    shards = {Path(f).name for f in artifact_files(client, run.info.run_id, f"model/checkpoint/{ckpt}")}
    assert {"__0_0.distcp", "__1_0.distcp"} <= shards  # saved by both ranks
    assert np.isfinite(run.data.metrics["train/ne_lifetime/click"])  # TorchRec metrics synced over ranks
    out = run_evaluate("--run", run.info.run_id, "--data", str(data / "eval"), "--tracking-uri", uri, "--no-log")
    np.testing.assert_allclose(out.report.metrics.ne, eval_metrics(run, "ne"), rtol=1e-5)


@pytest.mark.slow
def test_run_tracked_on_a_real_mlflow_server_is_evaluated_from_downloaded_artifacts(mlflow_server, data, tmp_path):
    run_id = train_in_process(data, tmp_path / "out", mlflow_server.url, None, "tracking.experiment=served")
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # not a local folder: evaluate must download
    out = run_evaluate("--run", run_id, "--data", str(data / "eval"), "--tracking-uri", mlflow_server.url)
    np.testing.assert_allclose(out.report.metrics.ne, eval_metrics(run, "ne"), rtol=1e-5)
    assert client.get_run(out.eval_run).data.tags["mlflow.parentRunId"] == run_id


def test_a_resumed_training_continues_its_mlflow_run(data, tmp_path):
    uri, out, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out", tmp_path / "artifacts"
    first = train_in_process(data, out, uri, artifacts, "train.max_steps=12", "train.checkpoint.every=4")
    second = train_in_process(data, out, uri, artifacts, "train.checkpoint.every=4")  # resume: true is the default
    assert second == first
    client = MlflowClient(uri)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["recsys_mtl.resumed_at_steps"] == "12"
    assert run.data.params["train.max_steps"] == "12"  # MLflow keeps a param's first value; the change is a tag
    assert run.data.tags["recsys_mtl.resume.step-12.changed_params"] == "train.max_steps: 12 -> None"
    total = max(m.step for m in client.get_metric_history(first, "train/loss_total"))
    assert total > 12
    for task in TASKS:  # each logged step once, before and after the resume
        steps = [m.step for m in client.get_metric_history(first, f"train/loss/{task}")]
        assert sorted(steps) == list(range(EVERY, total + 1, EVERY)), steps
    assert "resumes/step-12/config.yaml" in artifact_files(client, first)
    # lifetime train metrics carry on across the resume: they end where an uninterrupted run's end
    straight = train_in_process(data, tmp_path / "straight", uri, artifacts, "train.checkpoint.every=4")
    for name in ("ne_lifetime", "logloss_lifetime", "calibration_lifetime"):
        resumed, whole = (client.get_metric_history(r, f"train/{name}/{TASKS[0]}") for r in (first, straight))
        assert max(m.step for m in resumed) == max(m.step for m in whole) == total
        last = {m.step: m.value for m in resumed}[total], {m.step: m.value for m in whole}[total]
        assert last[0] == pytest.approx(last[1], rel=1e-6), name
    evals = [m.step for m in client.get_metric_history(first, "eval/ne/click")]
    again = train_in_process(data, out, uri, artifacts, "train.checkpoint.every=4", register="resumed-mtl")
    assert again == first  # the finished training again (e.g. a retry after a failure past its end)
    train_in_process(data, out, uri, artifacts, "train.checkpoint.every=4", register="resumed-mtl")
    assert len(client.search_model_versions("name = 'resumed-mtl'")) == 1  # no second version of the same model
    assert [m.step for m in client.get_metric_history(first, "eval/ne/click")] == evals  # nothing re-logged
    assert sorted(m.step for m in client.get_metric_history(first, "train/samples_per_second")) == [12, total]


def test_a_rerun_that_trains_nothing_logs_the_model_with_the_config_it_was_trained_with(data, tmp_path):
    """A finished run re-run under another learning rate trains nothing; its logged model keeps the old config."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = train_in_process(data, tmp_path / "run", uri, tmp_path / "artifacts")
    again = train_in_process(data, tmp_path / "run", uri, tmp_path / "artifacts", "optim.dense.lr=0.0123")
    client = MlflowClient(uri)
    for run_id, dense_lr in ((first, 0.01), (again, 0.01)):
        local = client.download_artifacts(run_id, "model/config.yaml", str(tmp_path / run_id))
        assert yaml.safe_load(Path(local).read_text())["optim"]["dense"]["lr"] == dense_lr


class _StopAt:
    """At step `at`, sends this process SIGTERM (as a scheduler would) or, with signum None, raises an error."""

    def __init__(self, at: int, signum: int | None) -> None:
        self.at, self.signum = at, signum

    def on_train_start(self, trainer) -> None: ...
    def on_eval(self, trainer, step, epoch, metrics) -> None: ...
    def on_train_metrics(self, trainer, step, metrics) -> None: ...
    def on_train_end(self, trainer, result) -> None: ...

    def on_log(self, trainer, records) -> None:
        if any(r["step"] == self.at for r in records):
            if self.signum is None:
                raise RuntimeError("a bug in a callback")
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, status", [(15, "KILLED"), (None, "FAILED")])
def test_a_run_stopped_by_sigterm_or_an_error_is_closed_with_its_metrics_sent(data, tmp_path, signum, status):
    """Trainer.fit closes the run for every caller (the pipeline's too), metrics queued before the stop included."""
    from recsys_mtl.config.train import TrainConfig
    from recsys_mtl.tracking.callback import TrackingCallback
    from recsys_mtl.train import Trainer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrainConfig.load(str(CONFIG), overrides(data, tmp_path / "out", uri, tmp_path / "artifacts",
                                                     "train.epochs=20", "tracking.flush_interval_s=60"))
    tracking = TrackingCallback()
    with pytest.raises(KeyboardInterrupt if signum else RuntimeError):
        Trainer(config, callbacks=[tracking, _StopAt(12, signum)]).fit()
    client = MlflowClient(uri)
    run = client.get_run(tracking.run_id)
    assert run.info.status == status
    logged_steps = {m.step for m in client.get_metric_history(tracking.run_id, f"train/loss/{TASKS[0]}")}
    assert max(logged_steps) == 12  # sent at close, though the flush interval had not come round


def test_evaluate_keeps_what_the_store_did_not_take_and_exits_1(store, data, tmp_path, monkeypatch, capsys):
    """Without --out the report lives in a temp folder; the spool must outlive it, in the XDG state folder."""
    from recsys_mtl.tracking import spool

    def store_down(client, record):
        raise ConnectionError("store down (simulated)")

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(spool, "deliver_record", store_down)
    bare = store["root"] / "equal" / "checkpoints"
    assert main(["evaluate", "--checkpoint", str(bare), "--data", str(data / "eval"), "--experiment", "spooled",
                 "--tracking-uri", store["uri"]]) == 1
    err = capsys.readouterr().err
    kept = tmp_path / "state" / "recsys-mtl" / "eval" / "mlflow_spool"
    [spooled] = kept.glob("*.jsonl")
    assert f"they are kept in {spooled}" in err and f"recsys-mtl tracking flush-spool {kept}" in err
    monkeypatch.undo()
    assert main(["tracking", "flush-spool", str(kept)]) == 0
    run = MlflowClient(store["uri"]).get_run(spooled.stem)
    assert run.info.status == "FINISHED" and "eval/ne/click" in run.data.metrics


def test_evaluate_on_an_eval_set_with_no_rows_is_one_line_naming_it(store, data, tmp_path, capsys):
    import pyarrow.parquet as pq

    first = sorted((data / "eval").rglob("*.parquet"))[0]
    empty = tmp_path / "empty_eval"
    empty.mkdir()
    pq.write_table(pq.read_table(first).slice(0, 0), empty / "part-0.parquet")
    bare = store["root"] / "equal" / "checkpoints"
    assert main(["evaluate", "--checkpoint", str(bare), "--data", str(empty), "--no-log"]) == 2
    assert f"recsys-mtl: error: {empty}: the eval set has no rows" in capsys.readouterr().err


@pytest.mark.parametrize("name, ok", [("like+share", False), ("x,y", False), ("ads/click", True), ("a//b", False)])
def test_a_task_name_mlflow_cannot_hold_stops_a_tracked_run_before_it_starts(data, tmp_path, capsys, name, ok):
    spec = yaml.safe_load((data / "_feature_spec.yaml").read_text())
    spec["tasks"][0] = dict(spec["tasks"][0], name=name, label=spec["tasks"][0].get("label") or spec["tasks"][0]["name"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["train", str(CONFIG)] + [f"--set={o}" for o in overrides(data, tmp_path / "out", uri, None,
                                                                        f"data.spec={tmp_path / 'spec.yaml'}",
                                                                        "train.max_steps=2")]
    assert main(argv) == (0 if ok else 2)
    if not ok:
        assert f"task name(s) {name!r} cannot end an MLflow metric name" in capsys.readouterr().err
        assert not (tmp_path / "out" / "checkpoints").exists()
        assert main(argv + ["--set=tracking.enabled=false"]) == 0  # untracked, it trains
        assert main(["evaluate", "--checkpoint", str(tmp_path / "out" / "checkpoints"), "--data", str(data / "eval"),
                     "--experiment", "names", "--tracking-uri", uri]) == 2  # logging it would drop those metrics
        assert f"task name(s) {name!r} cannot end an MLflow metric name" in capsys.readouterr().err


def test_at_end_false_logs_no_model_rather_than_an_earlier_runs(data, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_in_process(data, tmp_path / "out", uri, tmp_path / "artifacts", "train.max_steps=4")
    capsys.readouterr()
    second = train_in_process(data, tmp_path / "out", uri, tmp_path / "artifacts", "train.max_steps=4",
                              "train.checkpoint.resume=false", "train.checkpoint.at_end=false", "optim.dense.lr=0.5")
    assert "no model logged (nor registered): the end of training, step 4, was not checkpointed" in \
        capsys.readouterr().err
    run = MlflowClient(uri).get_run(second)
    assert "recsys_mtl.model" not in run.data.tags and "model" not in artifact_files(MlflowClient(uri), second)


def test_training_with_an_empty_eval_set_is_refused_before_it_trains(data, tmp_path, capsys):
    import pyarrow.parquet as pq

    first = sorted((data / "eval").rglob("*.parquet"))[0]
    (tmp_path / "empty").mkdir()
    pq.write_table(pq.read_table(first).slice(0, 0), tmp_path / "empty" / "part-0.parquet")
    argv = ["train", str(CONFIG), f"--set=data.train_path={data / 'train'}", f"--set=data.eval_path={tmp_path / 'empty'}",
            f"--set=data.spec={data / '_feature_spec.yaml'}", f"--set=train.output_dir={tmp_path / 'out'}"]
    assert main(argv) == 2
    assert f"data.eval_path {tmp_path / 'empty'}: the eval set has no rows" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()
