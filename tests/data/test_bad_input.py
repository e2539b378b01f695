"""Every kind of bad input gets an error naming the file and column, and nothing written is damaged."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_mtl.data import DataError
from recsys_mtl.data.stream import ParquetStream

from .tiny import tiny_spec, tiny_table, write_tiny


def test_missing_path_names_it(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    with pytest.raises(DataError, match=r"nowhere: no such file or directory"):
        ParquetStream(tmp_path / "nowhere", spec, 10)


def test_empty_folder_says_no_parquet_files(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Parquet files found"):
        ParquetStream(tmp_path / "empty", spec, 10)


def test_corrupt_file_is_named(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_tiny(tmp_path / "d", files=2)
    (folder / "part-9.parquet").write_bytes(b"this is not parquet at all" * 100)
    with pytest.raises(DataError, match=r"part-9.parquet: not a readable Parquet file"):
        ParquetStream(folder, spec, 10)


def test_truncated_file_is_named(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_tiny(tmp_path / "d", files=2)
    data = (folder / "part-1.parquet").read_bytes()
    (folder / "part-1.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"part-1.parquet: not a readable Parquet file"):
        ParquetStream(folder, spec, 10)


def test_corrupt_data_page_is_named_with_its_row_group(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_tiny(tmp_path / "d", files=1, rows_per_file=1000, row_group=1000)
    path = folder / "part-0.parquet"
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    body_end = len(data) - 8 - footer
    rng = np.random.default_rng(0)
    for i in rng.integers(8, body_end, 400):  # scribble over column chunks, keep the footer
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    stream = ParquetStream(folder, spec, 100)
    with pytest.raises(DataError, match=r"part-0.parquet \(row group 0\)"):
        list(stream)


def test_schemas_that_differ_between_files_name_both(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_tiny(tmp_path / "d", files=1)
    table = tiny_table(1000, 100)
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", table.column("user_id").cast(pa.int32()))
    pq.write_table(table, folder / "part-5.parquet")
    with pytest.raises(DataError, match=r"part-5.parquet: column 'user_id' has type int32 but .*part-0.parquet has int64"):
        ParquetStream(folder, spec, 10)


def test_files_whose_list_items_differ_only_in_nullability_read_as_one_dataset(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_tiny(tmp_path / "d", files=1, rows_per_file=100, row_group=100)
    table = tiny_table(100, 100)
    strict = pa.list_(pa.field("element", pa.int64(), nullable=False))
    table = table.set_column(table.schema.get_field_index("hist_items"), "hist_items",
                             table.column("hist_items").cast(strict))
    pq.write_table(table, folder / "part-5.parquet")
    assert pq.read_schema(folder / "part-5.parquet").field("hist_items").type != \
        pq.read_schema(folder / "part-0.parquet").field("hist_items").type
    assert sum(b.batch_size for b in ParquetStream(folder, spec, 50, shuffle=False)) == 200


def write_one(tmp_path, **override):
    folder = tmp_path / "d"
    folder.mkdir(parents=True)
    pq.write_table(tiny_table(0, 100, **override), folder / "bad.parquet")
    return folder


def test_null_in_sparse_id_column_names_column_and_file(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    ids = pa.array([1, None] * 50, pa.int64())
    folder = write_one(tmp_path, item_id=ids)
    with pytest.raises(DataError, match=r"bad.parquet \(row group 0\): column 'item_id' \(sparse feature 'item_id'\) has 50 null ids"):
        list(ParquetStream(folder, spec, 10))


def test_null_inside_a_list_is_an_error_but_a_null_list_is_empty(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    lists = pa.array([[1, None]] + [[2]] * 99, pa.list_(pa.int64()))
    with pytest.raises(DataError, match="column 'hist_items'.*null id inside a list"):
        list(ParquetStream(write_one(tmp_path, hist_items=lists), spec, 10))
    lists = pa.array([None, [3, 4]] * 50, pa.list_(pa.int64()))
    batch = next(iter(ParquetStream(write_one(tmp_path / "ok", hist_items=lists), spec, 4, shuffle=False)))
    assert batch.sparse["hist_items"].lengths().tolist() == [0, 2, 0, 2]


def test_negative_id_names_column_and_value(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_one(tmp_path, user_id=pa.array([3] * 99 + [-4], pa.int64()))
    with pytest.raises(DataError, match=r"column 'user_id' \(sparse feature 'user_id'\) has negative id -4"):
        list(ParquetStream(folder, spec, 10))


def test_id_beyond_table_size_names_table_and_size_unless_hashed(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_one(tmp_path, item_id=pa.array([3] * 99 + [50], pa.int64()))
    with pytest.raises(DataError, match=r"column 'item_id' .*has id 50 beyond table 'item' of size 50.*hashed: true"):
        list(ParquetStream(folder, spec, 10))
    lists = pa.array([[7, 51]] * 100, pa.list_(pa.int64()))
    with pytest.raises(DataError, match=r"column 'hist_items' .*has id 51 beyond table 'item'"):
        list(ParquetStream(write_one(tmp_path / "l", hist_items=lists), spec, 10))


def test_unsigned_columns_read_like_signed_ones(tmp_path):
    """uint64 hashed ids past 2**63 are reduced before the int64 cast; unsigned labels and dense columns load."""
    spec, _ = tiny_spec(tmp_path)
    big = np.array([2**63 + 5, 2**64 - 1, 3, 7] * 25, dtype=np.uint64)
    labels = pa.array(np.array([0, 1] * 50, dtype=np.uint8), mask=np.array([False, False, True, False] * 25))
    folder = write_one(tmp_path, query=pa.array(big), is_buy=labels, price=pa.array(np.arange(100, dtype=np.uint16)))
    batch = next(iter(ParquetStream(folder, spec, 4, shuffle=False)))
    assert batch.sparse["query"].values().tolist() == [int(v) % 7 for v in big[:4]]
    assert batch.labels[:, 1].tolist() == [0, 1, 0, 1] and batch.label_mask[:, 1].tolist() == [True, True, False, True]
    too_big = pa.array(np.array([3] * 99 + [2**63 + 1], dtype=np.uint64))
    with pytest.raises(DataError, match=r"column 'item_id' .*has id 9223372036854775809 beyond table 'item' of size 50"):
        list(ParquetStream(write_one(tmp_path / "u", item_id=too_big), spec, 10))


def test_dense_nulls_and_nans_become_fill_in_float_and_infinities_are_named(tmp_path):
    spec, _ = tiny_spec(tmp_path, dense=[{"name": "row", "fill": -1.5}, {"name": "price", "fill": 0.5}])
    rows = pa.array([True, None, False, True] * 25, pa.bool_())  # bool, and an int column with a fractional fill
    price = pa.array(np.array([1.0, np.nan, 2.0, 3.0] * 25), mask=np.array([False, False, True, False] * 25))
    batch = next(iter(ParquetStream(write_one(tmp_path, row=rows, price=price), spec, 4, shuffle=False)))
    assert batch.dense.tolist() == [[1.0, 1.0], [-1.5, 0.5], [0.0, 0.5], [1.0, 3.0]]
    ints = pa.array([1, None, 3, 4] * 25, pa.int64())
    batch = next(iter(ParquetStream(write_one(tmp_path / "i", row=ints), spec, 4, shuffle=False)))
    assert batch.dense[:, 0].tolist() == [1.0, -1.5, 3.0, 4.0]
    inf = pa.array(np.array([1.0] * 99 + [np.inf], dtype=np.float32))
    with pytest.raises(DataError, match=r"bad.parquet \(row group 0\): column 'price' \(dense feature 'price'\) has an "
                                        r"infinite value at row 99"):
        list(ParquetStream(write_one(tmp_path / "inf", price=inf), spec, 10))


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_a_negative_or_non_finite_sample_weight_is_named(tmp_path, value):
    spec, _ = tiny_spec(tmp_path, tasks=[{"name": "click", "weight_column": "w"}, {"name": "buy", "label": "is_buy"}])
    w = pa.array([1.0] * 50 + [value] + [2.0] * 49, pa.float32())
    with pytest.raises(DataError, match=r"column 'w' \(sample weight of task 'click'\) has .* at row 50; expected "
                                        r"finite weights >= 0"):
        list(ParquetStream(write_one(tmp_path, w=w), spec, 10))


def test_reading_bad_data_leaves_the_files_untouched(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_one(tmp_path, user_id=pa.array([3] * 99 + [-4], pa.int64()))
    before = (folder / "bad.parquet").read_bytes()
    with pytest.raises(DataError):
        list(ParquetStream(folder, spec, 10))
    assert (folder / "bad.parquet").read_bytes() == before


def test_synth_refuses_to_overwrite_and_a_failed_run_leaves_no_partial_output(tmp_path, monkeypatch):
    from recsys_mtl.data import synthetic

    cfg = synthetic.SynthConfig(tasks=4, rows=3000, days=1, rows_per_file=1024, row_group_size=512, table_scale=0.001)
    out = synthetic.generate_synthetic(tmp_path / "out", cfg)
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        synthetic.generate_synthetic(out, cfg)
    calls = {"n": 0}
    real_chunk = synthetic._chunk

    def failing_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_chunk", failing_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.generate_synthetic(out, cfg, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left behind
