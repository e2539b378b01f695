"""Checks of a `sqlite:///` tracking URI made before MLflow opens it.

MLflow creates a missing database file silently (an empty store: a typo in evaluate's --tracking-uri then reads
"run not found"), and on a read-only file it logs SQLAlchemy's whole error before raising.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from recsys_mtl.config.loader import ConfigError


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (read as SQLAlchemy reads it), None for another scheme or an
    in-memory database."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return None if not database or database == ":memory:" else Path(database).expanduser()


def check_sqlite_store(uri: str, setting: str, *, must_exist: bool = False, writable: bool = True) -> None:
    """ConfigError (one line, naming `setting` and the file) if the sqlite store of `uri` is missing (`must_exist`)
    or cannot be written (`writable`: the file, and its folder for sqlite's journal). Other URIs pass."""
    path = sqlite_file(uri)
    if path is None:
        return
    if not path.exists():
        if must_exist:
            raise ConfigError(f"{setting} {uri}: no such database file {path} (MLflow would create an empty store); "
                              "check the path")
        folder = path.parent
        if writable and folder.is_dir() and not os.access(folder, os.W_OK):
            raise ConfigError(f"{setting} {uri}: cannot create {path}: its folder is not writable; point the URI at "
                              "a writable folder")
        return
    if writable and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        what = path if not os.access(path, os.W_OK) else f"{path.parent} (sqlite writes its journal beside {path.name})"
        raise ConfigError(f"{setting} {uri}: the store is read-only ({what} is not writable); make it writable, "
                          "point the URI at a writable copy, or set tracking.enabled: false")


@contextlib.contextmanager
def quiet_sqlalchemy_dump():
    """MLflow logs a failed SQL statement with its traceback before raising: the caller's one line says it."""
    logger = logging.getLogger("mlflow.store.db.utils")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


__all__ = ["check_sqlite_store", "quiet_sqlalchemy_dump", "sqlite_file"]
