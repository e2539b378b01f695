"""The GAUC group column of an eval set: read in scoring order, and bad columns named in one line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl.config.loader import ConfigError
from recsys_mtl.evaluate.scoring import eval_set_groups
from tests.data.tiny import tiny_spec, tiny_table


@pytest.fixture()
def eval_set(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = tmp_path / "eval"
    folder.mkdir()
    for f in range(2):
        table = tiny_table(f * 50, 50, user_name=pa.array([f"u{i % 7}" for i in range(50)]),
                           score=pa.array(np.ones(50)), maybe=pa.array([None] + [1] * 49, pa.int64()))
        pq.write_table(table, folder / f"part-{f}.parquet")
    return spec, folder


def scored_labels(spec, folder):
    from recsys_mtl.data.stream import ParquetStream

    stream = ParquetStream(str(folder), spec, 100, rank=0, world_size=1, num_workers=0, seed=0, shuffle=False,
                           shuffle_buffer_rows=0, drop_remainder=False)
    stream.set_epoch(0)
    batch = next(iter(stream))
    return batch.labels, batch.label_mask


def test_group_ids_come_in_scoring_order_and_string_ids_become_indices(eval_set):
    spec, folder = eval_set
    labels, mask = scored_labels(spec, folder)
    users = eval_set_groups(folder, "user_id", spec, labels, mask)
    assert users.tolist() == list(range(100))  # tiny_table's user_id is the row number
    names = eval_set_groups(folder, "user_name", spec, labels, mask)
    assert names.dtype == torch.int64 and len(set(names.tolist())) == 7


def test_rows_out_of_scoring_order_are_refused(eval_set):
    spec, folder = eval_set
    labels, mask = scored_labels(spec, folder)
    with pytest.raises(RuntimeError, match="not in the order the eval set was scored"):
        eval_set_groups(folder, "user_id", spec, labels.flip(0), mask.flip(0))


@pytest.mark.parametrize("column, message", [
    ("nope", "GAUC group column 'nope' (evaluation.gauc_group) is missing; the data has: user_id"),
    ("score", "GAUC group column 'score' has type double, expected integer or string ids"),
    ("maybe", "GAUC group column 'maybe' has 2 null ids; expected an id on every row"),
])
def test_a_bad_group_column_is_a_one_line_error_naming_it(eval_set, column, message):
    spec, folder = eval_set
    labels, mask = scored_labels(spec, folder)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eval_set_groups(folder, column, spec, labels, mask)
