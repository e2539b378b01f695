"""Folders written by `data synth` and `data kuairand` read as plain Parquet in other tools; old folders still load."""

from __future__ import annotations

import glob
import json
import shutil

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.data.commands import find_spec
from recsys_mtl.data.folder import README_FILE, SPEC_FILE, SYNTHETIC_FILE, spec_file


def _rows_in_parquet_files(folder) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.rglob("*.parquet"))


def test_a_synthetic_folder_reads_with_pyarrow_pandas_and_a_parquet_glob(synth_small):
    rows = _rows_in_parquet_files(synth_small)
    assert rows == 24_000
    assert (synth_small / SPEC_FILE).is_file() and (synth_small / SYNTHETIC_FILE).is_file()

    dataset = ds.dataset(synth_small, format="parquet", partitioning="hive")
    assert dataset.count_rows() == rows
    assert "date" in dataset.schema.names  # the hive partition column
    frame = pd.read_parquet(synth_small, columns=["item_id"])
    assert len(frame) == rows
    files = glob.glob(f"{synth_small}/**/*.parquet", recursive=True)  # what DuckDB's read_parquet('DIR/**/*.parquet') reads
    assert ds.dataset(files, format="parquet").count_rows() == rows


def test_a_kuairand_folder_reads_whole_and_by_split_with_pyarrow_and_pandas(kuairand_dir):
    assert (kuairand_dir / SPEC_FILE).is_file() and (kuairand_dir / README_FILE).is_file()
    train = ds.dataset(kuairand_dir / "train", format="parquet", partitioning="hive").count_rows()
    test = ds.dataset(kuairand_dir / "test", format="parquet", partitioning="hive").count_rows()
    assert train > 0 and test > 0
    assert ds.dataset(kuairand_dir, format="parquet").count_rows() == train + test
    assert len(pd.read_parquet(kuairand_dir / "test", columns=["user_id"])) == test


def test_a_folder_written_before_the_underscore_names_still_finds_its_spec(synth_small, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(synth_small, old)
    (old / SPEC_FILE).rename(old / "feature_spec.yaml")
    (old / SYNTHETIC_FILE).rename(old / "synthetic.json")

    assert spec_file(old) == old / "feature_spec.yaml"
    assert find_spec(old / "date=2026-01-01", None) == old / "feature_spec.yaml"
    assert FeatureSpec.load(spec_file(old)) == FeatureSpec.load(synth_small / SPEC_FILE)
    assert spec_file(tmp_path) == tmp_path / SPEC_FILE  # neither: the current name, for the error to give
    assert json.loads((old / "synthetic.json").read_text())["tasks"] == 8
