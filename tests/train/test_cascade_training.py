"""A cascade end to end through the CLI: 2 gloo processes train it like 1, and evaluate and tracking report the
derived task like any other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.test_launch import ROW_GROUP, env, run_ok, steps, train_cmd


@pytest.fixture(scope="module")
def cascade_data(tmp_path_factory) -> tuple[Path, Path]:
    """768 rows in row groups of 64, 8 tasks (conversion is post-click); the spec makes it a cascade of click."""
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    cfg = SynthConfig(tasks=8, rows=768, days=3, seed=0, rows_per_file=256, row_group_size=ROW_GROUP,
                      table_scale=0.0001)
    data = generate_synthetic(tmp_path_factory.mktemp("cascade") / "data", cfg)
    spec = yaml.safe_load((data / "_feature_spec.yaml").read_text())
    for task in spec["tasks"]:
        if task["name"] == "conversion":
            task["depends_on"] = "click"
    path = data.parent / "cascade_spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return data, path


@pytest.mark.slow
def test_two_processes_train_a_cascade_like_one_and_evaluate_and_tracking_report_the_product(cascade_data, tmp_path):
    data, spec = cascade_data
    common = (f"data.spec={spec}", "weighting.method=go4align", "weighting.args={num_groups: 3}",
              f"data.eval_path={data}")
    run_ok(train_cmd(data, tmp_path / "one", f"data.batch_size={2 * ROW_GROUP}", *common))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = run_ok(train_cmd(data, tmp_path / "two", f"data.batch_size={ROW_GROUP}", *common, "tracking.enabled=true",
                           "tracking.train_metrics_every_n_steps=1", f"tracking.tracking_uri={uri}", f"tracking.artifact_location={(tmp_path / 'art').as_uri()}",
                           nproc=2))
    one, two = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert len(one) == len(two) == 6 and len(one[0]["losses"]) == 9  # 8 heads + click_conversion
    torch.testing.assert_close(torch.tensor([s["losses"] for s in two]), torch.tensor([s["losses"] for s in one]),
                               rtol=1e-5, atol=1e-6)
    assert "click_conversion=" in log  # the eval line

    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {"eval/ne/click_conversion", "eval/auc/click_conversion", "train/weight/click_conversion"} <= set(run.data.metrics)

    proc = subprocess.run([sys.executable, "-m", "recsys_mtl.cli", "evaluate", "--checkpoint",
                           str(tmp_path / "two" / "checkpoints"), "--data", str(data), "--no-log",
                           "--gauc-group", "user_id"], env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head = next(line.split() for line in lines if line.startswith("task "))
    rows = {line.split()[0]: dict(zip(head, line.split())) for line in lines if line.split() and line.split()[0] in
            ("click", "conversion", "click_conversion")}
    assert int(rows["click_conversion"]["rows"]) == 768  # every row: click is always labelled
    assert int(rows["conversion"]["rows"]) < 768  # the conditional: clicked rows only

    # GAUC by user_id as evaluate prints it: each user's AUC, weighted by the user's labelled rows, computed here
    # pair by pair from the model's scores and the user ids read straight from the Parquet files
    import numpy as np
    import pyarrow.dataset as pads

    from recsys_mtl.evaluate.loading import load_model
    from recsys_mtl.evaluate.scoring import score_eval_set
    from tests.metrics.test_grouped_auc import direct_gauc

    loaded = load_model(tmp_path / "two" / "checkpoints")
    logits, labels, mask = score_eval_set(loaded.model, loaded.spec, data, 256)
    files = sorted(str(p) for p in data.rglob("*.parquet"))
    users = pads.dataset(files, format="parquet").to_table(columns=["user_id"]).column("user_id").to_numpy()
    want = direct_gauc(logits.double().numpy(), labels.numpy(), mask.numpy(), users)
    for name in rows:
        t = loaded.spec.task_names.index(name)
        assert float(rows[name]["GAUC"]) == pytest.approx(want[t], abs=6e-6), name

    # predict and the logged model as an MLflow pyfunc model give the product as p(click) * p(conversion | click)
    import mlflow.pyfunc
    import pandas as pd

    proc = subprocess.run([sys.executable, "-m", "recsys_mtl.cli", "predict", "--model", str(run.info.run_id), "--data",
                           str(data), "--out", str(tmp_path / "preds"), "--keep", "user_id", "--tracking-uri", uri],
                          env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = pd.read_parquet(tmp_path / "preds")
    assert list(preds.columns) == ["user_id"] + [f"pred_{t}" for t in loaded.spec.task_names]
    np.testing.assert_allclose(preds["pred_click_conversion"], preds["pred_click"] * preds["pred_conversion"],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(preds["pred_click_conversion"], torch.sigmoid(logits[:, -1]).numpy(), rtol=1e-5,
                               atol=1e-7)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    frame = pads.dataset(files, format="parquet").to_table().to_pandas()
    np.testing.assert_allclose(model.predict(frame)["pred_click_conversion"], preds["pred_click_conversion"],
                               rtol=1e-5, atol=1e-7)
