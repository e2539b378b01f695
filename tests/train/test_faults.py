"""Faults a training meets on disk and in its inputs (issue 21): each ends in one clear line, or is survived."""

from __future__ import annotations

import json

import pytest

from recsys_mtl.train import Trainer
from recsys_mtl.train.train_log import TRAIN_LOG

from tests.models.batches import ListSource, rank_batches, tiny_spec
from tests.train.helpers import tiny_config


def logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]


def test_a_train_log_cut_mid_line_by_a_kill_is_dropped_with_a_warning_and_the_resume_matches(tmp_path, caplog):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    Trainer(tiny_config(tmp_path / "straight", train={"epochs": 2}), spec=spec, train_data=ListSource(batches)).fit()
    Trainer(tiny_config(tmp_path / "cut", train={"epochs": 2, "max_steps": 3}), spec=spec,
            train_data=ListSource(batches)).fit()
    log_file = tmp_path / "cut" / TRAIN_LOG
    with open(log_file, "a") as f:
        f.write('{"step": 4, "epoch": 0, "loss": 0.6')  # killed while appending step 4
    with caplog.at_level("WARNING", logger="recsys_mtl.train.train_log"):
        Trainer(tiny_config(tmp_path / "cut", train={"epochs": 2}), spec=spec, train_data=ListSource(batches)).fit()
    assert f"{log_file}: dropped 1 unreadable line(s) (line 4; a write cut short by a kill)" in caplog.text
    assert logged(tmp_path / "cut") == logged(tmp_path / "straight")


def test_a_read_only_output_folder_is_one_line_naming_it(tmp_path, read_only):
    from recsys_mtl.config.loader import ConfigError

    spec = tiny_spec()
    (tmp_path / "out").mkdir()
    out = read_only(tmp_path / "out")
    trainer = Trainer(tiny_config(out), spec=spec, train_data=ListSource(rank_batches(spec, 4, 16, 1, 0)))
    with pytest.raises(ConfigError) as err:  # the CLI prints a ConfigError as its one line, exit 2
        trainer.fit()
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"train.output_dir {out}: cannot write there (")
    assert str(err.value).endswith("set train.output_dir to a folder this user can write")
