"""The step log: rank 0 appends every step's losses and weights to `<output_dir>/train_log.jsonl`, read back from
the device once per window (one host sync), and training stops when the loss stops being finite. A resume cuts
the log back to its checkpoint; a line cut short by a kill is dropped then, with a warning.

`loss` is the weighted data loss sum(w_t L_t), without the wide_l2 penalty. Mixed into Trainer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trainer stops before it checkpoints such a model."""

    exit_code = 1  # the CLI prints it as one line (not bad input: not 2)


class TrainerStepLog:
    """The trainer's step records: `_pending` step tensors, written out by `_flush_records`."""

    def _truncate_train_log(self, step: int) -> None:
        keep_steps_up_to(self.output_dir / TRAIN_LOG, step)

    def _flush_records(self) -> list[dict[str, Any]]:
        """One host sync for the whole window: stack the pending step tensors and write them out."""
        if not self._pending:
            return []
        losses = torch.stack([p[2] for p in self._pending]).cpu()
        weights = torch.stack([p[3] for p in self._pending]).cpu()
        totals = (losses * weights).sum(dim=1)
        records = [
            {"step": s, "epoch": e, "loss": float(totals[i]), "losses": losses[i].tolist(), "weights": weights[i].tolist()}
            for i, (s, e, _, _) in enumerate(self._pending)
        ]
        self._pending.clear()
        finite = torch.isfinite(totals)
        diverged = None if bool(finite.all()) else int((~finite).nonzero()[0])
        if diverged is not None:
            records = records[:diverged + 1]  # the log ends at the first non-finite step
        self.last_loss = records[-1]["loss"]
        if self.env.is_main:
            append_records(self.output_dir / TRAIN_LOG, records)
            for cb in self.callbacks:
                cb.on_log(self, records)
        if diverged is not None:  # the losses are global: every rank stops here
            self._diverged(records[-1])
        return records

    def _diverged(self, record: dict[str, Any]) -> None:
        """Found where the step records are read (every train.log_every steps, and before each checkpoint)."""
        bad = [name for name, v in zip(self.spec.task_names, record["losses"]) if not np.isfinite(v)]
        saved = (f"the newest checkpoint, step {self._saved_step}, is from before it" if self._saved_step > 0
                 else "no checkpoint was written")
        raise TrainingDiverged(
            f"the training loss is {record['loss']} at step {record['step']} (non-finite task losses: "
            f"{', '.join(bad) or 'none; a weight is not finite'}), found at step {self.step}; training stopped and "
            f"{saved}. Lower the learning rates (optim.dense.lr, optim.embedding.lr) or look for extreme values in "
            "the data, then resume or start again")


__all__ = ["TRAIN_LOG", "TrainingDiverged", "TrainerStepLog", "append_records", "keep_steps_up_to", "read_records"]
