import pytest
import yaml

from recsys_mtl.config import ConfigError, FeatureSpec, flatten, from_dict
from recsys_mtl.data.errors import DataError
from recsys_mtl.data.stream import ParquetStream

from .tiny import TINY_SPEC, tiny_spec, tiny_table, write_tiny


def write_spec(tmp_path, data):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_spec_loads_into_typed_objects(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    assert spec.task_names == ["click", "buy"]
    assert spec.tasks[1].source == "is_buy"
    assert spec.sparse[2].multi_valued and spec.sparse[3].hashed
    assert spec.features_of_table("item") == ["item_id", "hist_items"]
    assert spec.tables["user"].num_embeddings == 100


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    data = {**TINY_SPEC, "sparse": [{**TINY_SPEC["sparse"][0], "multivalued": True}, *TINY_SPEC["sparse"][1:]]}
    path = write_spec(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        FeatureSpec.load(path)
    msg = str(err.value)
    assert str(path) in msg and "sparse[0].multivalued" in msg and "did you mean 'multi_valued'" in msg


def test_wrong_type_names_key_and_expected_type(tmp_path):
    data = {**TINY_SPEC, "tables": {**TINY_SPEC["tables"], "user": {"num_embeddings": "many", "embedding_dim": 4}}}
    with pytest.raises(ConfigError, match=r"tables\.user\.num_embeddings: expected an integer, got 'many'"):
        FeatureSpec.load(write_spec(tmp_path, data))


def test_bool_is_not_accepted_as_integer(tmp_path):
    data = {**TINY_SPEC, "tables": {**TINY_SPEC["tables"], "user": {"num_embeddings": True, "embedding_dim": 4}}}
    with pytest.raises(ConfigError, match="expected an integer"):
        FeatureSpec.load(write_spec(tmp_path, data))


def test_duplicate_feature_name_is_an_error(tmp_path):
    data = {**TINY_SPEC, "dense": [{"name": "row"}, {"name": "user_id"}]}
    with pytest.raises(ConfigError, match=r"dense\[1\]\.name: duplicate name 'user_id' \(already used in sparse\)"):
        FeatureSpec.load(write_spec(tmp_path, data))


def test_unknown_table_and_unused_table_are_errors(tmp_path):
    data = {**TINY_SPEC, "sparse": [{"name": "user_id", "table": "users"}]}
    with pytest.raises(ConfigError, match=r"sparse\[0\]\.table: unknown table 'users'"):
        FeatureSpec.load(write_spec(tmp_path, data))
    data = {**TINY_SPEC, "tables": {**TINY_SPEC["tables"], "spare": {"num_embeddings": 3, "embedding_dim": 2}}}
    with pytest.raises(ConfigError, match="tables.spare: table is not used"):
        FeatureSpec.load(write_spec(tmp_path, data))


def test_bad_enum_value_lists_allowed_values(tmp_path):
    data = {**TINY_SPEC, "dense": [{"name": "row", "transform": "log"}]}
    with pytest.raises(ConfigError, match=r"dense\[0\]\.transform: expected one of 'none' \| 'log1p'"):
        FeatureSpec.load(write_spec(tmp_path, data))


def test_missing_required_key_and_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'tasks'"):
        FeatureSpec.load(write_spec(tmp_path, {k: v for k, v in TINY_SPEC.items() if k != "tasks"}))
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        FeatureSpec.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntables: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        FeatureSpec.load(bad)


def test_spec_column_missing_from_data_names_file_and_column(tmp_path):
    folder = write_tiny(tmp_path / "d", files=1)
    spec, _ = tiny_spec(tmp_path, tasks=[{"name": "click"}, {"name": "like"}])
    with pytest.raises(ConfigError) as err:
        ParquetStream(folder, spec, 10)
    assert "part-0.parquet" in str(err.value) and "column 'like' (label of task 'like') is missing" in str(err.value)


def test_multi_valued_column_declared_single_is_a_type_error(tmp_path):
    folder = write_tiny(tmp_path / "d", files=1)
    sparse = [dict(f) for f in TINY_SPEC["sparse"]]
    sparse[2].pop("multi_valued")
    spec, _ = tiny_spec(tmp_path, sparse=sparse)
    with pytest.raises(ConfigError, match="column 'hist_items'.*expected integers.*multi_valued: true"):
        ParquetStream(folder, spec, 10)


def test_non_binary_label_names_column_row_and_value(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "d"
    folder.mkdir()
    table = tiny_table(0, 100, click=pa.array([0, 1, 2, 1] * 25, pa.int8()))
    pq.write_table(table, folder / "part-0.parquet")
    spec, _ = tiny_spec(tmp_path)
    with pytest.raises(DataError, match=r"part-0.parquet \(row group 0\): column 'click' \(label of task 'click'\) has "
                                        r"value 2 at row 2; expected binary"):
        list(ParquetStream(folder, spec, 10))


def test_a_binary_float_column_holding_0_3_names_file_column_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "d"
    folder.mkdir()
    pq.write_table(tiny_table(0, 10, click=pa.array([0.0] * 7 + [0.3, 1.0, 0.0])), folder / "p.parquet")
    spec, _ = tiny_spec(tmp_path)
    with pytest.raises(DataError, match=r"p.parquet \(row group 0\): column 'click' \(label of task 'click'\) has "
                                        r"value 0.3 at row 7; expected binary labels 0/1.*type: regression"):
        list(ParquetStream(folder, spec, 5))


def test_a_binary_float_column_of_0_1_and_nan_reads_nan_as_unlabelled(tmp_path):
    """pandas writes an integer label column with missing values as floats with NaN."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "d"
    folder.mkdir()
    click = pa.array(np.array([1.0, np.nan, 0.0, 1.0] * 25), mask=np.array([False, False, False, True] * 25))
    pq.write_table(tiny_table(0, 100, click=click), folder / "p.parquet")
    spec, _ = tiny_spec(tmp_path)
    batch = next(iter(ParquetStream(folder, spec, 4, shuffle=False)))
    assert batch.labels[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert batch.label_mask[:, 0].tolist() == [True, False, True, False]


def test_a_string_label_column_is_rejected_at_schema_check(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "d"
    folder.mkdir()
    pq.write_table(tiny_table(0, 10, click=pa.array(["yes"] * 10)), folder / "p.parquet")
    spec, _ = tiny_spec(tmp_path)
    with pytest.raises(ConfigError, match="p.parquet: column 'click' .*has type string, expected binary labels"):
        ParquetStream(folder, spec, 5)


def test_flatten_gives_dotted_keys(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    flat = flatten(spec)
    assert flat["tables.user.num_embeddings"] == 100
    assert flat["sparse.2.multi_valued"] is True
    assert flat["tasks.1.label"] == "is_buy"


def test_from_dict_accepts_nested_dataclasses_and_rejects_non_mapping():
    from recsys_mtl.config.features import TableSpec

    assert from_dict(TableSpec, {"num_embeddings": 3, "embedding_dim": 2}).pooling == "sum"
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(TableSpec, [1, 2], "cfg.yaml")


def test_exponent_without_a_dot_is_a_number_in_files_and_overrides(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-4` and `2.5e3` as strings: a setting that must be a number takes them as the
    number they mean; a string setting keeps such text (a git hash like 4921e07)."""
    from pathlib import Path

    from recsys_mtl.config.train import TrainConfig

    base = Path(__file__).resolve().parents[2] / "configs" / "test_tiny.yaml"
    config = TrainConfig.load(str(base), ["optim.dense.lr=2.5e-3", "weighting.method=go4align",
                                          "weighting.args={num_groups: 2, beta: 1e-4}", "tracking.run_name=4921e07"])
    assert config.optim.dense.lr == 2.5e-3 and config.tracking.run_name == "4921e07"
    from recsys_mtl.weighting import build_weighting

    assert build_weighting("go4align", 3, **config.weighting.args).beta == 1e-4
    assert build_weighting("static", 2, weights=["1e0", "2.5e-1"]).static_weights.tolist() == [1.0, 0.25]
    path = tmp_path / "c.yaml"
    path.write_text(base.read_text().replace("dense: {type: adam, lr: 0.01}", "dense: {type: adam, lr: 2E-3}"))
    assert TrainConfig.load(str(path)).optim.dense.lr == 2e-3



def test_a_key_given_twice_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_size: 512\n  batch_size: 256\n")
    with pytest.raises(ConfigError, match=r"c.yaml: invalid YAML \(line 3, column 3\): duplicate key 'batch_size'"):
        from recsys_mtl.config.loader import read_yaml

        read_yaml(path)
