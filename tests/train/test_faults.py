"""Faults a training meets on disk and in its inputs (issue 21): each ends in one clear line, or is survived."""

from __future__ import annotations

import json

import pytest

from recsys_mtl.train import Trainer
from recsys_mtl.train.step_log import TRAIN_LOG

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
    with caplog.at_level("WARNING", logger="recsys_mtl.train.step_log"):
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


CHECKPOINT_EVERY_2 = {"epochs": 3, "checkpoint": {"every": 2, "keep": 2}}


def _inject_enospc_at_save(monkeypatch, nth: int) -> None:
    """Where no small file system can be mounted: DCP's file creation fails with ENOSPC from save `nth` on."""
    import errno

    import torch.distributed.checkpoint.filesystem as dcp_fs

    from recsys_mtl.train.checkpoint import CheckpointManager

    saves = {"n": 0}
    real_save, real_create = CheckpointManager.save, dcp_fs.FileSystem.create_stream

    def counting_save(self, *args, **kwargs):
        saves["n"] += 1
        return real_save(self, *args, **kwargs)

    def create_stream(self, path, mode):
        if saves["n"] >= nth:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_create(self, path, mode)

    monkeypatch.setattr(CheckpointManager, "save", counting_save)
    monkeypatch.setattr(dcp_fs.FileSystem, "create_stream", create_stream)


@pytest.mark.parametrize("disk", ["small tmpfs", "injected ENOSPC"])
def test_a_full_disk_is_one_line_naming_the_folder_and_the_earlier_checkpoints_stay_resumable(
        tmp_path, small_filesystem, monkeypatch, disk):
    """Each checkpoint of the tiny model takes ~145 kB: on 400 kB the third save finds the disk full."""
    from recsys_mtl.train.checkpoint import DiskFull

    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    root = small_filesystem(400 * 1024) if disk == "small tmpfs" else tmp_path
    if root is None:
        pytest.skip("no tmpfs can be mounted here (not root); the injected ENOSPC case covers it")
    if disk == "injected ENOSPC":
        _inject_enospc_at_save(monkeypatch, nth=3)
    trainer = Trainer(tiny_config(root / "out", train=CHECKPOINT_EVERY_2), spec=spec, train_data=ListSource(batches))
    with pytest.raises(DiskFull) as err:
        trainer.fit()
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 1  # the CLI prints it as its one line
    checkpoints = root / "out" / "checkpoints"
    assert message.startswith(f"checkpoint step 6 not saved: the disk holding {checkpoints} is full (")
    assert "the earlier checkpoints are intact (newest step-00000004)" in message
    assert not list(checkpoints.glob(".tmp-*"))  # the partial save is gone: its space is free again
    monkeypatch.undo()
    resumed = Trainer(tiny_config(root / "out", train=CHECKPOINT_EVERY_2), spec=spec, train_data=ListSource(batches))
    assert resumed.maybe_resume() and resumed.step == 4
