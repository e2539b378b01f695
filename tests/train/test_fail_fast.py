"""A bad id anywhere in the training or eval set stops the trainer before its first step."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_mtl.data.errors import DataError
from recsys_mtl.data.stream import ParquetStream
from recsys_mtl.train.trainer import Trainer

from ..data.tiny import tiny_spec, tiny_table, write_tiny
from .helpers import tiny_config


def write_with_bad_item(folder, *, statistics: bool, in_list: bool = False):
    """Two files of 4 row groups; the second file's last row group holds one id past the item table (50)."""
    folder.mkdir(parents=True)
    pq.write_table(tiny_table(0, 400), folder / "part-0.parquet", row_group_size=100, write_statistics=statistics)
    bad = tiny_table(400, 400)
    column = "hist_items" if in_list else "item_id"
    if in_list:
        values = bad.column(column).combine_chunks()
        flat = values.flatten().to_numpy().copy()
        flat[-1] = 57
        bad = bad.set_column(bad.schema.get_field_index(column), column,
                             pa.ListArray.from_arrays(values.offsets, pa.array(flat, pa.int64())))
    else:
        ids = bad.column(column).to_numpy().copy()
        ids[-1] = 57
        bad = bad.set_column(bad.schema.get_field_index(column), column, pa.array(ids, pa.int64()))
    pq.write_table(bad, folder / "part-1.parquet", row_group_size=100, write_statistics=statistics)
    return folder


@pytest.mark.parametrize("statistics", [True, False], ids=["from-statistics", "by-scan"])
@pytest.mark.parametrize("in_list", [False, True], ids=["single", "list"])
def test_check_ids_finds_an_id_past_its_table_in_the_last_row_group(tmp_path, statistics, in_list):
    spec, _ = tiny_spec(tmp_path)
    data = write_with_bad_item(tmp_path / "d", statistics=statistics, in_list=in_list)
    stream = ParquetStream(data, spec, 16, shuffle=False, drop_remainder=False)
    column = "hist_items" if in_list else "item_id"
    with pytest.raises(DataError, match=rf"part-1.parquet \(row group 3\): column '{column}' \(sparse feature "
                                        rf"'{column}'\) has id 57 beyond table 'item' of size 50"):
        stream.check_ids()
    ParquetStream(write_tiny(tmp_path / "good", files=2), spec, 16, shuffle=False).check_ids()  # no error


def test_a_bad_eval_id_stops_the_trainer_before_the_first_step(tmp_path):
    spec, spec_path = tiny_spec(tmp_path)
    train = write_tiny(tmp_path / "train", files=2)
    evald = write_with_bad_item(tmp_path / "eval", statistics=True)
    out = tmp_path / "out"
    config = tiny_config(out, data={"train_path": str(train), "eval_path": str(evald), "spec": str(spec_path)})
    with pytest.raises(DataError, match=r"^data\.eval_path: \S+part-1\.parquet \(row group 3\): column 'item_id' "
                                        r"\(sparse feature 'item_id'\) has id 57 beyond table 'item'"):
        Trainer(config)
    assert not (out / "checkpoints").exists() and not (out / "train_log.jsonl").exists()
