"""A tracking store that cannot be used is one line, before MLflow touches it (issue 21, item 5)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from recsys_mtl.config.loader import ConfigError
from recsys_mtl.config.tracking import TrackingConfig
from recsys_mtl.tracking.tracker import RunTracker


def test_a_read_only_sqlite_store_is_one_line_without_sqlalchemys_dump(tmp_path, read_only, capfd):
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("ro", artifact_location=str(tmp_path / "artifacts"))
    read_only(store)
    capfd.readouterr()
    with pytest.raises(ConfigError) as err:
        RunTracker.start(TrackingConfig(tracking_uri=uri, experiment="ro"), work_dir=tmp_path / "work", rank=0)
    assert str(err.value).startswith(f"tracking.tracking_uri {uri}: the store is read-only (")
    assert "\n" not in str(err.value)
    out, errors = capfd.readouterr()
    assert "SQLAlchemy" not in out + errors and "Traceback" not in out + errors


def test_evaluate_against_a_sqlite_file_that_does_not_exist_is_refused_and_creates_none(tmp_path, capsys):
    from recsys_mtl.cli import main

    missing = tmp_path / "typo" / "mlflow.db"
    missing.parent.mkdir()
    (tmp_path / "eval").mkdir()
    code = main(["evaluate", "--run", "0123456789abcdef", "--data", str(tmp_path / "eval"),
                 "--tracking-uri", f"sqlite:///{missing}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == (f"recsys-mtl: error: --tracking-uri sqlite:///{missing}: no such database file {missing} "
                   "(MLflow would create an empty store); check the path")
    assert not missing.exists()
