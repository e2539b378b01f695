"""String ids (and lists of strings) are hashed into their table: deterministically, in range, each distinct value
once, the same in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_mtl.config import ConfigError
from recsys_mtl.data.arrow import _hashed, string_hashes
from recsys_mtl.data.stream import ParquetStream

from .tiny import tiny_spec, tiny_table

VALUES = [f"u_{i}" for i in range(2000)] + ["", "ü_ñ", "a" * 300]


def test_a_string_hashes_the_same_however_arrow_holds_it():
    expected = string_hashes(pa.array(VALUES))
    assert expected.dtype == np.uint64 and len(set(expected.tolist())) == len(VALUES)
    for array in (pa.array(VALUES, pa.large_string()), pa.array([v.encode() for v in VALUES], pa.binary()),
                  pa.array(VALUES).dictionary_encode(), pa.array(["pad"] + VALUES).slice(1)):
        assert (string_hashes(array.dictionary.take(array.indices) if pa.types.is_dictionary(array.type) else array)
                == expected).all()
    rows = _hashed(pa.array(VALUES * 3).dictionary_encode(), 1000)
    assert (rows == np.tile(_hashed(pa.array(VALUES), 1000), 3)).all()  # per row = per distinct value


def test_hashed_rows_are_in_the_table_and_collide_as_uniform_hashing_predicts():
    n, size = 50_000, 500_000
    rows = _hashed(pa.array([f"user-{i:07d}" for i in range(n)]), size)
    assert rows.min() >= 0 and rows.max() < size
    shared = np.bincount(rows, minlength=size)
    colliding = shared[rows] > 1  # values that share their row with another value
    expected = 1 - np.exp(-(n - 1) / size)  # the documented rate, about 9.5% at n/size = 0.1
    assert abs(colliding.mean() - expected) < 0.01, (colliding.mean(), expected)


def test_another_process_with_another_hash_seed_hashes_to_the_same_rows():
    code = ("import json, sys, pyarrow as pa; from recsys_mtl.data.arrow import _hashed; "
            "print(json.dumps(_hashed(pa.array(json.loads(sys.argv[1])), 997).tolist()))")
    runs = [subprocess.run([sys.executable, "-c", code, json.dumps(VALUES[:300])], check=True, capture_output=True,
                           text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert json.loads(runs[0]) == json.loads(runs[1]) == _hashed(pa.array(VALUES[:300]), 997).tolist()


def write_string_ids(folder, dictionary: bool):
    folder.mkdir()
    table = tiny_table(0, 400)
    users = pa.array([f"u_{i % 37}" for i in range(400)])
    hist = pa.array([[f"i_{(i + k) % 11}" for k in range(i % 3)] for i in range(400)], pa.list_(pa.string()))
    table = table.set_column(0, "user_id", users).set_column(2, "hist_items", hist)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=100, use_dictionary=dictionary)
    return folder


@pytest.mark.parametrize("dictionary", [True, False], ids=["dictionary-pages", "plain"])
def test_string_and_string_list_columns_read_as_hashed_ids(tmp_path, dictionary):
    sparse = [{"name": "user_id", "table": "user", "hashed": True},
              {"name": "item_id", "table": "item"},
              {"name": "hist_items", "table": "item", "multi_valued": True, "hashed": True},
              {"name": "query", "table": "query", "hashed": True}]
    spec, _ = tiny_spec(tmp_path, sparse=sparse)
    data = write_string_ids(tmp_path / "d", dictionary)
    batches = list(ParquetStream(data, spec, 400, shuffle=False, drop_remainder=False))
    kjt = batches[0].sparse.to_dict()
    users = kjt["user_id"].values().numpy()
    assert (users == _hashed(pa.array([f"u_{i % 37}" for i in range(400)]), 100)).all()
    assert users.min() >= 0 and users.max() < 100
    hist = kjt["hist_items"]
    assert hist.lengths().tolist() == [i % 3 for i in range(400)]
    expected = [f"i_{(i + k) % 11}" for i in range(400) for k in range(i % 3)]
    assert (hist.values().numpy() == _hashed(pa.array(expected), 50)).all()


def test_a_string_column_without_hashed_is_an_error_that_says_to_set_it(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    data = write_string_ids(tmp_path / "d", dictionary=True)
    with pytest.raises(ConfigError, match=r"column 'user_id' \(sparse feature 'user_id'\) holds string ids, which are "
                                          r"hashed into the table: set hashed: true"):
        ParquetStream(data, spec, 100)
