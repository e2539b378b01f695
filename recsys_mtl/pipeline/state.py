"""Resumable steps: each finished step of a date leaves one JSON record, written atomically.

A step runs only if its record is missing, so re-running a completed date does
nothing and a failed run picks up at the step that failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STEPS = ("train", "evaluate", "decide", "promote")


class StepStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, date: str) -> Path:
        return self.root / date

    def get(self, date: str, step: str) -> dict[str, Any] | None:
        path = self.folder(date) / f"{step}.json"
        return json.loads(path.read_text()) if path.is_file() else None

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
