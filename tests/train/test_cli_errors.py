"""`recsys-mtl train` turns bad input into one clear line and exit code 2."""

from pathlib import Path

import pytest

from recsys_mtl.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "test_tiny.yaml"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.architecture=transformer", "model.architecture: unknown architecture 'transformer'; set it to one of: mmoe, ple, shared_bottom"),
        ("sharding.tables={user: rowwise}", "sharding.tables.user: expected one of 'table_wise' | 'row_wise' | 'column_wise' | 'data_parallel', got 'rowwise'"),
        ("weighting.method=go5align", "weighting.method: unknown weighting method 'go5align'; set it to one of:"),
        ("train.epoch=3", "train.epoch: unknown key (did you mean 'epochs'?)"),
        ("train.task_epochs={is_click: 4", "override 'train.task_epochs={is_click: 4': the value '{is_click: 4' is not valid YAML"),
    ],
)
def test_bad_config_values_exit_2_with_what_to_change(override, message, capsys):
    assert main(["train", str(CONFIG), "--set", override]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("nproc", ["0", "-1", "two"])
def test_a_bad_process_count_is_refused(nproc, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(CONFIG), "--nproc", nproc])
    assert exit_.value.code == 2
    assert f"argument --nproc: '{nproc}' is not a number of processes (an integer >= 1)" in capsys.readouterr().err
