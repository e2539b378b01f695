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


@pytest.mark.parametrize("argv, message", [
    (["train", str(CONFIG), "--set", "tracking.enabled=true", "--set", "tracking.tracking_uri=mlflow.db"],
     "tracking.tracking_uri: 'mlflow.db' is not a tracking URI: use sqlite:///ABSOLUTE/PATH/mlflow.db"),
    (["data", "synth", "--out", "/tmp/never-written", "--tasks", "200"], "tasks must be in [1, 128], got 200 (--tasks)"),
])
def test_more_bad_input_is_one_line_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unreachable_tracking_server_is_one_line_with_exit_2(tmp_path, capsys):
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    data = generate_synthetic(tmp_path / "data", SynthConfig(tasks=2, rows=512, days=1, table_scale=0.0005))
    argv = ["train", str(CONFIG), "--set", f"data.train_path={data}", "--set", f"data.spec={data / '_feature_spec.yaml'}",
            "--set", "tracking.enabled=true", "--set", "tracking.tracking_uri=http://127.0.0.1:9",
            "--set", f"train.output_dir={tmp_path / 'out'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "recsys-mtl: error: tracking.tracking_uri http://127.0.0.1:9: cannot create an MLflow run" in err
    assert "set tracking.enabled: false" in err
