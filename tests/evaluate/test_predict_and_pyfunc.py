"""`recsys-mtl predict` and the logged model as an MLflow pyfunc model (load_model, and a real `mlflow models serve`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_tiny.yaml"
MODEL = "tiny-pyfunc"
KEYS = ["user_id", "item_id"]
SERVE_TIMEOUT_S = 240  # FIELD_NOTES: an MLflow server is up in 8-20 s, 43 s under load


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
                MLFLOW_DISABLE_TELEMETRY="true")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict:
    """A tiny tracked run, registered as tiny-pyfunc version 1 with the alias champion."""
    from mlflow.tracking import MlflowClient

    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    root = tmp_path_factory.mktemp("pyfunc")
    data = generate_synthetic(root / "data", SynthConfig(tasks=4, rows=2000, days=2, seed=5, rows_per_file=500,
                                                         row_group_size=250, table_scale=0.0005))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "run"
    assert main(["train", str(CONFIG), f"--set=data.train_path={data}", f"--set=data.spec={data / '_feature_spec.yaml'}",
                 f"--set=train.output_dir={out}", "--set=data.batch_size=128", "--set=tracking.enabled=true",
                 f"--set=tracking.tracking_uri={uri}", f"--set=tracking.artifact_location={(root / 'artifacts').as_uri()}",
                 "--set=tracking.experiment=pyfunc", "--set=tracking.system_metrics_interval_s=0",
                 "--register-model", MODEL]) == 0
    client = MlflowClient(uri, registry_uri=uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    run_id = (out / "tracking" / "run_id").read_text().strip()
    return {"root": root, "data": data, "uri": uri, "run_id": run_id, "checkpoint": out / "checkpoints"}


def _table(data: Path, columns: list[str] | None = None):
    """The data's Parquet files (sorted by path, as the reader orders them) as one table; side files are skipped."""
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f, columns=columns) for f in sorted(data.rglob("*.parquet"))])


def _reference(tracked) -> pd.DataFrame:
    """Probabilities of the checkpoint on the data, in file order, by the exact evaluation path."""
    from recsys_mtl.evaluate.loading import load_model
    from recsys_mtl.evaluate.scoring import score_eval_set

    loaded = load_model(tracked["checkpoint"])
    logits, _, _ = score_eval_set(loaded.model, loaded.spec, tracked["data"], 512)
    keys = _table(tracked["data"], KEYS).to_pandas()  # the same order: files sorted by path
    return keys.assign(**{f"pred_{t}": torch.sigmoid(logits[:, i]).numpy() for i, t in enumerate(loaded.spec.task_names)})


def _predict(tracked, out: Path, *extra: str) -> int:
    return main(["predict", "--model", f"models:/{MODEL}@champion", "--data", str(tracked["data"]), "--out", str(out),
                 "--keep", *KEYS, "--tracking-uri", tracked["uri"], *extra])


def test_predict_writes_a_probability_per_task_beside_the_kept_keys_in_input_order(tracked, tmp_path):
    assert _predict(tracked, tmp_path / "preds") == 0
    got = pd.read_parquet(tmp_path / "preds")
    want = _reference(tracked)
    assert list(got.columns) == KEYS + ["pred_click", "pred_long_view", "pred_like", "pred_follow"]
    assert len(got) == 2000 and got["pred_click"].dtype == np.float32
    pd.testing.assert_frame_equal(got[KEYS], want[KEYS])
    np.testing.assert_allclose(got.drop(columns=KEYS).to_numpy(), want.drop(columns=KEYS).to_numpy(), rtol=1e-5,
                               atol=1e-7)
    assert [p.name for p in tmp_path.iterdir()] == ["preds"]  # no partial folder left beside it


def test_predict_refuses_a_non_empty_out_and_overwrite_replaces_it_whole(tracked, tmp_path, capsys):
    out = tmp_path / "preds"
    out.mkdir()
    (out / "old.parquet").write_text("old")
    assert _predict(tracked, out) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (out / "old.parquet").exists()
    assert _predict(tracked, out, "--overwrite", "--model", str(tracked["checkpoint"])) == 0
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds"]


def test_predict_input_without_a_feature_column_is_one_line_naming_it(tracked, tmp_path, capsys):
    table = _table(tracked["data"]).drop_columns(["item_id"])
    (tmp_path / "bad").mkdir()
    pq.write_table(table, tmp_path / "bad" / "part.parquet")
    assert main(["predict", "--model", str(tracked["checkpoint"]), "--data", str(tmp_path / "bad"), "--out",
                 str(tmp_path / "preds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'item_id'" in err[0] and "missing" in err[0]
    assert not (tmp_path / "preds").exists()
    wrong = table.append_column("item_id", table.column("user_id").cast("string"))
    pq.write_table(wrong, tmp_path / "bad" / "part.parquet")
    assert main(["predict", "--model", str(tracked["checkpoint"]), "--data", str(tmp_path / "bad"), "--out",
                 str(tmp_path / "preds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'item_id'" in err[0] and "sparse feature" in err[0]


def test_predict_with_two_processes_writes_the_same_predictions(tracked, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recsys_mtl.cli", "predict", "--model", str(tracked["checkpoint"]),
                           "--data", str(tracked["data"]), "--out", str(tmp_path / "two"), "--keep", *KEYS,
                           "--nproc", "2"], env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    order = KEYS + ["pred_click"]  # (user, item) repeats in the synthetic data; the prediction tells such rows apart
    got = pd.read_parquet(tmp_path / "two").sort_values(order).reset_index(drop=True)
    want = _reference(tracked).sort_values(order).reset_index(drop=True)
    assert len(got) == len(want) == 2000
    np.testing.assert_allclose(got.drop(columns=KEYS).to_numpy(), want.drop(columns=KEYS).to_numpy(), rtol=1e-5,
                               atol=1e-7)


def test_the_registered_model_loads_as_an_mlflow_pyfunc_and_predicts_like_predict(tracked, tmp_path):
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracked["uri"])
    mlflow.set_registry_uri(tracked["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    sparse = [c.name for c in model.metadata.get_input_schema().inputs]
    assert "user_id" in sparse and "hist_items" in sparse  # the signature comes from the feature spec
    frame = _table(tracked["data"]).to_pandas()
    got = model.predict(frame)
    want = _reference(tracked)
    np.testing.assert_allclose(got.to_numpy(), want.drop(columns=KEYS).to_numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="item_id"):
        model.predict(frame.drop(columns=["item_id"]))


def test_mlflow_models_serve_answers_an_invocations_request(tracked, tmp_path):
    from tests.tracking.conftest import free_port

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{MODEL}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        # the scoring server runs `uvicorn` from PATH: this environment's
        env=dict(_env(), MLFLOW_TRACKING_URI=tracked["uri"], MLFLOW_REGISTRY_URI=tracked["uri"],
                 PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not up: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        frame = _table(tracked["data"]).to_pandas().head(5)
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
        got = pd.DataFrame(answer["predictions"])
        want = _reference(tracked).head(5).drop(columns=KEYS)
        np.testing.assert_allclose(got[want.columns].to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-7)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
