"""What a training run tells the outside: the callback hooks (tracking uses them) and the result of `fit()`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from recsys_mtl.train.trainer import Trainer


class TrainerCallback:
    """Hooks for tracking; called on rank 0 only. Override what you need."""

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_log(self, trainer: "Trainer", records: list[dict[str, Any]]) -> None: ...
    def on_eval(self, trainer: "Trainer", step: int, epoch: int, metrics: dict[str, dict[str, float]]) -> None: ...
    def on_train_metrics(self, trainer: "Trainer", step: int, metrics: dict[str, torch.Tensor]) -> None:
        """Streaming per-task metrics ({"ne": [T], "ne_lifetime": [T], ...}, recsys_mtl.metrics.streaming)."""
    def on_checkpoint(self, trainer: "Trainer", step: int) -> None:
        """Step `step` is about to be checkpointed: what was reported up to it should be made durable now."""
    def on_train_end(self, trainer: "Trainer", result: "TrainResult") -> None: ...
    def on_train_error(self, trainer: "Trainer", exc: BaseException) -> None:
        """`fit` is raising `exc` (an error, Ctrl-C or SIGTERM); called before it propagates."""


@dataclasses.dataclass
class TrainResult:
    steps: int
    epochs_completed: int
    samples_per_second: float
    last_loss: float
    eval_metrics: dict[str, dict[str, float]] | None
    trained_steps: int = 0  # steps this fit() trained: 0 when it re-ran a finished training


__all__ = ["TrainerCallback", "TrainResult"]
