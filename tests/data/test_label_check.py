"""Label problems are said before training (issue 21, item 6): an all-null task, under one positive per batch."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.data.label_check import check_labels, label_coverage
from recsys_mtl.data.stream import ParquetStream

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broken_labels(tmp_path_factory) -> Path:
    """4 tasks; `like` is null on every row (a lost join), `follow` has 3 positives in 2048 rows; one file is
    written without statistics (the counts then come from its data)."""
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    root = generate_synthetic(tmp_path_factory.mktemp("labels") / "data",
                              SynthConfig(tasks=4, rows=2048, days=1, seed=1, rows_per_file=1024, row_group_size=256,
                                          table_scale=0.0005))
    files = sorted(root.rglob("*.parquet"))
    for n, path in enumerate(files):
        table = pq.read_table(path)
        like = table.schema.get_field_index("like")
        table = table.set_column(like, "like", pa.nulls(len(table), table.column("like").type))
        follow = table.schema.get_field_index("follow")
        ones = [1 if (n == 0 and i < 3) else 0 for i in range(len(table))]
        table = table.set_column(follow, "follow", pa.array(ones, table.column("follow").type))
        pq.write_table(table, path, row_group_size=256, write_statistics=n != 0)
    return root


def stream_of(root: Path) -> tuple[ParquetStream, FeatureSpec]:
    spec = FeatureSpec.load(root / "_feature_spec.yaml")
    return ParquetStream(root, spec, 64, shuffle=False), spec


def test_labelled_rows_come_from_statistics_or_the_data_and_match_a_count(broken_labels):
    stream, spec = stream_of(broken_labels)
    coverage = label_coverage(stream.units, spec, fragments=stream.fragments)
    table = pq.read_table(sorted(broken_labels.rglob("*.parquet")), columns=[t.source for t in spec.tasks])
    assert coverage.rows == 2048
    assert coverage.labelled == [len(table) - table.column(t.source).null_count for t in spec.tasks]
    assert coverage.labelled[spec.task_names.index("like")] == 0
    assert coverage.sampled_positives == [int(pc.sum(table.column(t.source)).as_py() or 0) for t in spec.tasks]


def test_an_all_null_task_and_a_rare_task_are_named_at_start(broken_labels, caplog):
    stream, spec = stream_of(broken_labels)
    with caplog.at_level(logging.WARNING, logger="recsys_mtl.data.label_check"):
        check_labels(stream.units, spec, "train", global_batch=256)
    assert "train: task(s) like (column 'like') have no labelled row in the 2048 training rows" in caplog.text
    assert "Set data.unlabelled_tasks: error to stop instead" in caplog.text
    assert "under one positive label per global batch of 256 rows on average (from 2048 rows read): follow 0.38" \
        in caplog.text


def test_unlabelled_tasks_error_stops_the_training_before_it_starts_in_one_line(broken_labels, tmp_path, capsys):
    from recsys_mtl.cli import main

    code = main(["train", str(REPO / "configs" / "test_tiny.yaml"), f"--set=data.train_path={broken_labels}",
                 f"--set=data.spec={broken_labels / '_feature_spec.yaml'}", f"--set=train.output_dir={tmp_path / 'out'}",
                 "--set=data.unlabelled_tasks=error"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the log lines of the build
    assert code == 2
    assert err.startswith(f"recsys-mtl: error: {broken_labels}: task(s) like (column 'like') have no labelled row")
    assert err.endswith("Fix the data, or drop the task from the feature spec (data.unlabelled_tasks: error)")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_float_label_column_of_nans_counts_as_unlabelled(broken_labels, tmp_path):
    """Float 0/1 label columns mark unlabelled rows with NaN, which Parquet's null counts do not see."""
    import shutil

    root = tmp_path / "nan"
    shutil.copytree(broken_labels, root)
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path)
        click = table.schema.get_field_index("click")
        table = table.set_column(click, "click", pa.array([float("nan")] * len(table), pa.float32()))
        pq.write_table(table, path, row_group_size=256)
    stream, spec = stream_of(root)
    coverage = label_coverage(stream.units, spec, fragments=stream.fragments)
    assert coverage.labelled[spec.task_names.index("click")] == 0
