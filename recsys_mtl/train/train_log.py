"""`<output_dir>/train_log.jsonl`: one JSON line per step, appended by rank 0; cut back to a checkpoint on resume.

A kill during an append leaves a partial last line; a resume drops it (with a warning) rather than stop.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"


def read_records(path: Path) -> list[dict]:
    """The step records of `path`; lines that do not parse (a write cut short by a kill) are left out, with a
    warning naming them."""
    records, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        log.warning("%s: dropped %d unreadable line(s) (line %s; a write cut short by a kill): the steps after the "
                    "checkpoint are logged again", path, len(bad), ", ".join(map(str, bad[:5])))
    return records


def keep_steps_up_to(path: Path, step: int) -> None:
    """Rewrite `path` (atomically) with its records of steps <= `step`: the resumed run logs the later ones again."""
    if not path.exists():
        return
    kept = [r for r in read_records(path) if r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


__all__ = ["TRAIN_LOG", "keep_steps_up_to", "read_records"]
