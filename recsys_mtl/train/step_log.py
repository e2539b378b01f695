"""The step log: rank 0 appends every step's losses and weights to `<output_dir>/train_log.jsonl`, read back from
the device once per window (one host sync), and training stops when the loss stops being finite.

`loss` is the weighted data loss sum(w_t L_t), without the wide_l2 penalty. Mixed into Trainer.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

TRAIN_LOG = "train_log.jsonl"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trainer stops before it checkpoints such a model."""

    exit_code = 1  # the CLI prints it as one line (not bad input: not 2)


class TrainerStepLog:
    """The trainer's step records: `_pending` step tensors, written out by `_flush_records`."""

    def _truncate_train_log(self, step: int) -> None:
        path = self.output_dir / TRAIN_LOG
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

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
            with open(self.output_dir / TRAIN_LOG, "a") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
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


__all__ = ["TRAIN_LOG", "TrainingDiverged", "TrainerStepLog"]
