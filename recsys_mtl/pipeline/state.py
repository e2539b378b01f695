"""Resumable steps: each finished step of a date leaves one JSON record, written atomically.

A step runs only if its record is missing, so re-running a completed date does
nothing and a failed run picks up at the step that failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recsys_mtl.config.loader import ConfigError

STEPS = ("train", "evaluate", "decide", "promote")


def _why(record: object) -> str:
    if isinstance(record, json.JSONDecodeError):
        return f"not JSON: {record.msg} at line {record.lineno} column {record.colno}"
    if isinstance(record, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"a JSON {type(record).__name__}, not an object"


class StepStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, date: str) -> Path:
        return self.root / date

    def get(self, date: str, step: str) -> dict[str, Any] | None:
        path = self.folder(date) / f"{step}.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            record = exc
        if not isinstance(record, dict):  # written atomically by put(): damaged or edited since
            raise ConfigError(f"{path}: pipeline state file is damaged ({_why(record)}); delete it to run the "
                              f"{step} step of {date} again (or restore it from a backup)")
        return record

    def put(self, date: str, step: str, record: dict[str, Any]) -> None:
        folder = self.folder(date)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{step}.json.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{step}.json")

    def completed(self, date: str) -> bool:
        return self.get(date, STEPS[-1]) is not None

    def dates(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
