"""`recsys-mtl data infer-spec` proposes a spec that reads the data it came from, and trains with configs/template.yaml."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_mtl.cli import main
from recsys_mtl.config import FeatureSpec
from recsys_mtl.data.folder import SPEC_FILE
from recsys_mtl.data.stream import ParquetStream

REPO = Path(__file__).resolve().parents[2]


def infer(data: Path, out: Path) -> FeatureSpec:
    assert main(["data", "infer-spec", str(data), "--out", str(out)]) == 0
    return FeatureSpec.load(out)


def read_all(data, spec) -> int:
    stream = ParquetStream(data, spec, 4096, shuffle=False, drop_remainder=False)
    stream.check_ids()
    return sum(batch.batch_size for batch in stream)


def test_the_spec_inferred_from_synthetic_data_reads_it_with_the_shipped_specs_tasks_and_features(synth_small, tmp_path):
    shipped = FeatureSpec.load(synth_small / SPEC_FILE)
    inferred = infer(synth_small, tmp_path / "spec.yaml")
    assert inferred.task_names == shipped.task_names
    assert set(inferred.sparse_names) | set(inferred.dense_names) == set(shipped.sparse_names) | set(shipped.dense_names)
    assert {f.name for f in inferred.sparse if f.multi_valued} == {f.name for f in shipped.sparse if f.multi_valued}
    assert all(d.transform.endswith("standard") and d.std > 0 for d in inferred.dense)
    assert read_all(synth_small, inferred) == 24_000
    text = (tmp_path / "spec.yaml").read_text()
    assert "# 0/1 values: a binary task" in text and "table of" in text and "mean and std computed" in text


def test_the_spec_inferred_from_kuairand_reads_both_splits(kuairand_dir, tmp_path):
    shipped = FeatureSpec.load(kuairand_dir / SPEC_FILE)
    inferred = infer(kuairand_dir / "train", tmp_path / "spec.yaml")
    assert set(shipped.task_names) <= set(inferred.task_names)  # 0/1 input flags are proposed as tasks too
    assert set(shipped.sparse_names) <= set(inferred.sparse_names) | set(inferred.task_names)
    assert read_all(kuairand_dir / "train", inferred) > 0


def test_string_ids_are_proposed_hashed_and_the_template_trains_on_the_result(tmp_path):
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    data = generate_synthetic(tmp_path / "d", SynthConfig(tasks=2, rows=2000, days=1, table_scale=0.001))
    part = next(data.rglob("*.parquet"))
    table = pq.read_table(part)
    users = pa.array([f"u_{v}" for v in table.column("user_id").to_pylist()])
    pq.write_table(table.set_column(table.schema.get_field_index("user_id"), "user_id", users), part)
    spec = infer(data, tmp_path / "spec.yaml")
    user = next(f for f in spec.sparse if f.name == "user_id")
    assert user.hashed and spec.tables[user.table].num_embeddings >= 10 * len(set(users.to_pylist()))  # ~10 rows each
    assert read_all(data, spec) == 2000

    from recsys_mtl.config.train import TrainConfig
    from recsys_mtl.train.trainer import Trainer

    config = TrainConfig.load(REPO / "configs" / "template.yaml", [
        f"data.train_path={data}", f"data.spec={tmp_path / 'spec.yaml'}", f"train.output_dir={tmp_path / 'run'}",
        "data.batch_size=256", "train.max_steps=3", "train.progress_bar=false"])
    config.check_paths()
    result = Trainer(config).fit()
    assert result.steps == 3 and result.last_loss == result.last_loss  # finite, not NaN


def test_a_named_numeric_label_becomes_a_regression_task_and_reads_back(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 2000
    watch = np.exp(rng.normal(3.0, 1.2, n))  # seconds: log-normal, skewed
    pq.write_table(pa.table({
        "user_id": pa.array(rng.integers(0, 50, n)),
        "click": pa.array(rng.integers(0, 2, n), type=pa.int8()),
        "watch_s": pa.array(watch, mask=rng.random(n) < 0.3),  # unlabelled where null
        "score": pa.array(rng.normal(size=n)),
    }), tmp_path / "part.parquet")
    out = tmp_path / "spec.yaml"
    assert main(["data", "infer-spec", str(tmp_path / "part.parquet"), "--out", str(out),
                 "--regression-task", "watch_s"]) == 0
    spec = FeatureSpec.load(out)
    assert spec.task_names == ["click", "watch_s"]
    watch_task = spec.tasks[1]
    assert watch_task.is_regression and watch_task.transform == "log1p" and watch_task.loss_name == "mse"
    assert spec.dense_names == ["score"]  # a float column not named stays a feature, with a hint in its comment
    assert "pass --regression-task score" in out.read_text()
    assert read_all(tmp_path / "part.parquet", spec) == n

    assert main(["data", "infer-spec", str(tmp_path / "part.parquet"), "--out", str(tmp_path / "x.yaml"),
                 "--regression-task", "watch"]) == 2
    assert "--regression-task watch: no such column; the data has: user_id, click, watch_s, score" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()
