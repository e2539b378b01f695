"""Regression tasks in the feature spec and the reader: validated settings, clipped + transformed float labels,
and bad labels named by file, column and row."""

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_mtl.config import ConfigError
from recsys_mtl.data.errors import DataError
from recsys_mtl.data.stream import ParquetStream

from .tiny import tiny_spec, tiny_table

WATCH = {"name": "watch", "label": "watch_s", "type": "regression", "transform": "log1p", "clip": [0, 100]}


def regression_spec(tmp_path, **task):
    return tiny_spec(tmp_path, tasks=[{"name": "click"}, {**WATCH, **task}, {"name": "buy", "label": "is_buy"}])[0]


def write(tmp_path, watch: pa.Array, n: int = 100):
    folder = tmp_path / "d"
    folder.mkdir(exist_ok=True)
    pq.write_table(tiny_table(0, n, watch_s=watch), folder / "bad.parquet")
    return folder


def test_a_regression_task_defaults_to_mse_and_a_binary_task_to_bce(tmp_path):
    spec = regression_spec(tmp_path)
    assert spec.task_types == ["binary", "regression", "binary"]
    assert [t.loss_name for t in spec.tasks] == ["bce", "mse", "bce"]
    assert spec.task_type_signature() == {"task_types": {"watch": "regression/log1p"}}
    binary_only, _ = tiny_spec(tmp_path)
    assert binary_only.task_type_signature() == {}  # checkpoints of all-binary specs keep their signature


@pytest.mark.parametrize("task, key, message", [
    ({"loss": "bce"}, "tasks[1].loss", "task 'watch' is a regression task: expected loss 'mse' or 'huber', got 'bce'"),
    ({"loss": "huber", "delta": 0}, "tasks[1].delta", "task 'watch': expected a finite number > 0, got 0.0"),
    ({"clip": [5, 1]}, "tasks[1].clip", r"task 'watch': expected \[low, high\] with finite low < high"),
    ({"clip": [1]}, "tasks[1].clip", r"task 'watch': expected \[low, high\]"),
    ({"clip": [-1, 10]}, "tasks[1].clip", "task 'watch': low -1.0 is negative under transform log1p"),
    ({"transform": "sqrt"}, "tasks[1].transform", "expected one of 'none' | 'log1p'"),
    ({"type": "ordinal"}, "tasks[1].type", "expected one of 'binary' | 'regression'"),
])
def test_bad_regression_settings_name_the_file_task_and_key(tmp_path, task, key, message):
    with pytest.raises(ConfigError, match=rf"tiny.yaml: {re.escape(key)}: {message}"):
        regression_spec(tmp_path, **task)


@pytest.mark.parametrize("task, key", [({"loss": "mse"}, "loss"), ({"transform": "log1p"}, "transform"),
                                       ({"clip": [0, 1]}, "clip"), ({"delta": 2.0}, "delta")])
def test_regression_settings_on_a_binary_task_are_refused(tmp_path, task, key):
    with pytest.raises(ConfigError, match=rf"tasks\[0\].{key}: task 'click' is binary"):
        tiny_spec(tmp_path, tasks=[{"name": "click", **task}])


@pytest.mark.parametrize("column", [
    pa.array(np.array([3.0, np.nan, 250.0, 0.0] * 25), mask=np.array([False, False, False, True] * 25)),
    pa.array(np.array([3, 0, 250, 0] * 25, dtype=np.int32), mask=np.array([False, True, False, True] * 25)),
])
def test_float_or_int_regression_labels_are_clipped_then_log1p_and_nulls_are_unlabelled(tmp_path, column):
    spec = regression_spec(tmp_path)
    batch = next(iter(ParquetStream(write(tmp_path, column), spec, 4, shuffle=False)))
    torch_labels = batch.labels[:, 1].tolist()
    assert batch.label_mask[:, 1].tolist() == [True, False, True, False]
    assert torch_labels == pytest.approx([math.log1p(3.0), 0.0, math.log1p(100.0), 0.0], rel=1e-6)  # 250 clipped
    assert set(batch.labels[:, 0].tolist()) <= {0.0, 1.0}  # binary tasks beside it are unchanged


def test_regression_labels_survive_the_shuffle_buffer_with_their_rows(tmp_path):
    """The `row` dense feature is the row number: after shuffling, each row still has its own label."""
    spec = regression_spec(tmp_path, transform="none", clip=None)
    watch = pa.array(np.arange(100, dtype=np.float64) * 0.5)
    batches = list(ParquetStream(write(tmp_path, watch), spec, 10, shuffle=True, shuffle_buffer_rows=50, seed=3))
    rows = np.concatenate([b.dense[:, 0].numpy() for b in batches])
    labels = np.concatenate([b.labels[:, 1].numpy() for b in batches])
    assert not np.array_equal(rows, np.sort(rows))
    np.testing.assert_allclose(labels, rows * 0.5)


@pytest.mark.parametrize("value, message", [
    (float("inf"), "has inf at row 42; expected finite numbers"),
    (-float("inf"), "has -inf at row 42; expected finite numbers"),
    (-2.0, "has -2.0 at row 42; transform log1p expects labels >= 0"),
])
def test_a_bad_regression_label_names_file_column_and_row(tmp_path, value, message):
    spec = regression_spec(tmp_path, clip=None)
    watch = pa.array([1.0] * 42 + [value] + [2.0] * 57)
    with pytest.raises(DataError, match=rf"bad.parquet \(row group 0\): column 'watch_s' \(label of regression task "
                                        rf"'watch'\) {message}"):
        list(ParquetStream(write(tmp_path, watch), spec, 10))


def test_a_negative_label_is_fine_without_log1p(tmp_path):
    spec = regression_spec(tmp_path, transform="none", clip=None)
    batch = next(iter(ParquetStream(write(tmp_path, pa.array([-2.5] * 100)), spec, 4, shuffle=False)))
    assert batch.labels[:, 1].tolist() == [-2.5] * 4


def test_a_non_numeric_regression_column_is_refused_at_schema_check(tmp_path):
    spec = regression_spec(tmp_path)
    with pytest.raises(ConfigError, match=r"bad.parquet: column 'watch_s' \(label of regression task 'watch'\) has "
                                          r"type string, expected numbers"):
        ParquetStream(write(tmp_path, pa.array(["12s"] * 100)), spec, 10)
