"""`<output_dir>/train_log.jsonl`: one JSON line per step, appended by rank 0; cut back to a checkpoint on resume.

A kill during an append leaves a partial last line; a resume drops it (with a warning) rather than stop.
"""

from __future__ import annotations

import errno
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


def append_records(path: Path, records: list[dict]) -> None:
    """Append step records; a full disk is one line (DiskFull) saying the checkpoints are intact."""
    try:
        with open(path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from recsys_mtl.train.checkpoint import DiskFull

        raise DiskFull(f"{path}: the disk is full, training stopped; the checkpoints written so far are intact: free "
                       "space, then run the same command to resume") from None


def keep_steps_up_to(path: Path, step: int) -> None:
    """Rewrite `path` (atomically) with its records of steps <= `step`: the resumed run logs the later ones again."""
    if not path.exists():
        return
    kept = [r for r in read_records(path) if r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


__all__ = ["TRAIN_LOG", "append_records", "keep_steps_up_to", "read_records"]
