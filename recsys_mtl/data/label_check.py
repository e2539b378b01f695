"""Label problems found before training: a task with no labelled row, a task with under one positive per batch.

An all-null label column (an upstream join that lost a source) would otherwise train silently: the task's head
keeps its prior bias and its loss is zero. Null counts come from the Parquet row-group statistics (no data read);
positive rates from the label columns of at most `max_rows` rows, spread over the dataset.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.data.errors import DataError

log = logging.getLogger(__name__)

MAX_ROWS_READ = 2_000_000
SETTING = "data.unlabelled_tasks"


@dataclasses.dataclass
class LabelCoverage:
    task_names: list[str]
    columns: list[str]
    rows: int
    labelled: list[int]  # exact, over every row
    sampled_rows: int  # rows whose labels were read for the positive rates
    sampled_positives: list[int]  # 0 for regression tasks

    def positives_per_batch(self, batch_rows: int) -> list[float]:
        return [p / max(self.sampled_rows, 1) * batch_rows for p in self.sampled_positives]


def label_coverage(units: Sequence, spec: FeatureSpec, max_rows: int = MAX_ROWS_READ,
                   fragments: Mapping[str, Any] | None = None) -> LabelCoverage:
    """`units`: the row groups of a dataset (objects with `path`, `index`, `num_rows`, as ParquetStream.units);
    `fragments`: its Parquet fragments by path (ParquetStream.fragments: any pyarrow filesystem), else local files.
    Integer label columns are counted from their null counts; float ones from their data (a NaN is unlabelled too,
    and statistics do not count NaNs)."""
    tasks = spec.head_tasks  # a cascade's derived tasks have no column: their labels come from these
    columns = [t.source for t in tasks]
    rows = sum(u.num_rows for u in units)
    labelled = [0] * len(columns)
    stride = max(1, -(-rows // max_rows))  # read every stride-th row group: at most ~max_rows rows, spread out
    to_read = {i: set() for i in range(0, len(units), stride)}  # row group -> its columns counted from the data
    files = dict(fragments) if fragments is not None else {}
    for i, unit in enumerate(units):
        if unit.path not in files:
            files[unit.path] = next(iter(ds.dataset(unit.path, format="parquet").get_fragments()))
        schema = files[unit.path].physical_schema
        group = files[unit.path].metadata.row_group(unit.index)
        stats = {group.column(c).path_in_schema: group.column(c).statistics for c in range(group.num_columns)}
        for t, name in enumerate(columns):
            floating = pa.types.is_floating(schema.field(name).type)
            if not floating and stats.get(name) is not None and stats[name].has_null_count:
                labelled[t] += unit.num_rows - stats[name].null_count
            else:
                to_read.setdefault(i, set()).add(t)
    read_rows, positives = 0, [0] * len(columns)
    for i, from_data in sorted(to_read.items()):
        unit = units[i]
        table = files[unit.path].subset(row_group_ids=[unit.index]).to_table(columns=columns)
        read_rows += unit.num_rows
        for t, name in enumerate(columns):
            col = table.column(name)
            present = pc.is_valid(col)
            if pa.types.is_floating(col.type):
                present = pc.and_(present, pc.invert(pc.is_nan(col)))
            if t in from_data:
                labelled[t] += int(pc.sum(present).as_py() or 0)
            if not tasks[t].is_regression:
                positives[t] += int(pc.sum(pc.equal(col, 1)).as_py() or 0)
    return LabelCoverage([t.name for t in tasks], columns, rows, labelled, read_rows, positives)


def check_labels(units: Sequence, spec: FeatureSpec, where: str, global_batch: int, unlabelled: str = "warn",
                 fragments: Mapping[str, Any] | None = None) -> LabelCoverage:
    """Warn (or, with `unlabelled` == "error", raise DataError) for tasks with no labelled row in `units`; warn
    for tasks with under one positive per global batch on average."""
    coverage = label_coverage(units, spec, fragments=fragments)
    empty = [f"{name} (column {col!r})" for name, col, n in zip(coverage.task_names, coverage.columns, coverage.labelled)
             if n == 0]
    if empty:
        message = (f"{where}: task(s) {', '.join(empty)} have no labelled row in the {coverage.rows} training rows "
                   "(the column is null everywhere: an upstream join that lost its source?); such a task trains "
                   "nothing and keeps its prior bias")
        if unlabelled == "error":
            raise DataError(f"{message}. Fix the data, or drop the task from the feature spec ({SETTING}: error)")
        log.warning("%s. Set %s: error to stop instead", message, SETTING)
    rare = [f"{name} {per:.2g}" for task, name, per, n in zip(spec.head_tasks, coverage.task_names,
                                                               coverage.positives_per_batch(global_batch),
                                                               coverage.labelled)
            if n and per < 1 and not task.is_regression]
    if rare:
        log.warning("%s: under one positive label per global batch of %d rows on average (from %d rows read): %s; "
                    "such tasks see batches without a positive most steps (their loss, gradient and weight are "
                    "noisy): a larger batch, or fewer tasks that rare, helps", where, global_batch,
                    coverage.sampled_rows, ", ".join(rare))
    return coverage


__all__ = ["LabelCoverage", "check_labels", "label_coverage"]
