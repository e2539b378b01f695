"""Evaluation during training: per-task AUC, NE, log loss and calibration over the whole eval set.

Each rank scores its share of the eval data into streaming per-task statistics
(recsys_mtl.metrics.streaming_eval: sums and fine logit histograms); one all-reduce
sums them, so every rank holds the same metrics and nothing is gathered row by row.
`TrainerEvaluation.evaluate` is the trainer's evaluation (mixed into Trainer).
`predict` (every row's logits, gathered to rank 0) and `task_metrics` (exact) stay for
callers that need the rows.
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterator, Sized

import torch
import torch.distributed as dist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.data.batch import Batch
from recsys_mtl.metrics.names import AUC, LOGLOSS, NMSE

log = logging.getLogger(__name__)


def metrics_by_task(evaluator, task_names: list[str]) -> dict[str, dict[str, float]]:
    """task -> {auc, ne, logloss, calibration, count} of binary tasks, {nmse, mse, rmse, mae, mae_raw, count} of
    regression tasks, from a StreamingEvaluator's statistics (the keys of `task_metrics`)."""
    return _by_task(evaluator.task_metrics(), task_names)


def _by_task(m, task_names: list[str]) -> dict[str, dict[str, float]]:
    """task -> its metrics (the type's metric names, and the labelled count) from a `TaskMetrics`."""
    from recsys_mtl.metrics import names

    out = {}
    for t, name in enumerate(task_names):
        keys = names.REGRESSION_METRICS if m.task_types[t] == names.REGRESSION else names.BINARY_METRICS
        out[name] = {key: float(getattr(m, key)[t]) for key in keys}
        out[name][names.COUNT] = int(m.n_labelled[t])
    return out


@torch.no_grad()
def eval_statistics(model: torch.nn.Module, batches: Sized, spec: FeatureSpec, batch_size: int, device: torch.device,
                    world_size: int):
    """Streaming per-task statistics of the whole eval set, summed over the ranks (every rank gets the totals).

    `model(dense, sparse) -> logits`; ranks may hold different numbers of eval rows: short batches are padded
    and missing batches filled with empty ones, all masked out (sharded lookups are collective)."""
    from recsys_mtl.metrics.streaming_eval import evaluator_for

    evaluator = evaluator_for(spec, device=device)
    for batch in _equal_count(batches, spec, batch_size, world_size, device):
        batch = pad_batch(batch, batch_size).to(device)
        evaluator.update(model(batch.dense, batch.sparse), batch.labels, batch.label_mask)
    return evaluator.all_reduce_() if world_size > 1 else evaluator


def task_metrics(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                 task_names: list[str], tasks=None) -> dict[str, dict[str, float]]:
    """task -> {auc, ne, logloss, calibration, count} of binary tasks, {nmse, mse, rmse, mae, mae_raw, count} of
    regression tasks, over labelled rows (exact, recsys_mtl.metrics.offline). `tasks`: the spec's TaskSpecs
    (None: all binary)."""
    from recsys_mtl.metrics.offline import task_metrics as offline_task_metrics

    types = [t.type for t in tasks] if tasks is not None else None
    transforms = [t.transform for t in tasks] if tasks is not None else None
    m = offline_task_metrics(logits, labels, mask, from_logits=True, task_types=types, label_transforms=transforms)
    return _by_task(m, task_names)


def pad_batch(batch: Batch, size: int) -> Batch:
    """Pad to `size` rows with unlabelled rows and empty id lists (ranks then exchange equal batches)."""
    b = batch.batch_size
    if b >= size:
        return batch
    extra = size - b
    keys = batch.sparse.keys()
    lengths = batch.sparse.lengths().view(len(keys), b)
    lengths = torch.cat([lengths, lengths.new_zeros(len(keys), extra)], dim=1).flatten()
    sparse = KeyedJaggedTensor(keys=keys, values=batch.sparse.values(), lengths=lengths,
                               weights=batch.sparse.weights_or_none())

    def pad(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return torch.cat([t, t.new_zeros((extra,) + tuple(t.shape[1:]))], dim=0)

    return Batch(dense=pad(batch.dense), sparse=sparse, labels=pad(batch.labels), label_mask=pad(batch.label_mask),
                 sample_weights=pad(batch.sample_weights))


def empty_batch(spec: FeatureSpec, size: int) -> Batch:
    """`size` unlabelled rows with no ids: filler for a rank that ran out of eval batches."""
    sparse = KeyedJaggedTensor(keys=spec.sparse_names, values=torch.zeros(0, dtype=torch.long),
                               lengths=torch.zeros(size * len(spec.sparse_names), dtype=torch.int32))
    return Batch(dense=torch.zeros(size, spec.num_dense), sparse=sparse,
                 labels=torch.zeros(size, spec.num_tasks), label_mask=torch.zeros(size, spec.num_tasks, dtype=torch.bool))


def _equal_count(batches: Sized, spec: FeatureSpec, batch_size: int, world_size: int,
                 device: torch.device) -> Iterator[Batch]:
    """The rank's batches, then empty ones up to the largest rank's count (sharded lookups are collective)."""
    n_local = len(batches)
    n_max = n_local
    if world_size > 1:
        t = torch.tensor([n_local], device=device)  # nccl reduces only device tensors
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        n_max = int(t.item())
    yield from itertools.islice(iter(batches), n_local)
    for _ in range(n_max - n_local):
        yield empty_batch(spec, batch_size)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Sized, spec: FeatureSpec, batch_size: int, device: torch.device,
            world_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Logits, labels and mask of the whole eval set (all ranks), on CPU, on rank 0; None on the other ranks
    (only one process holds the whole set).

    `model(dense, sparse) -> logits`; `batches` is a sized iterable (a stream).
    Ranks may hold different numbers of eval rows: short batches are padded and
    missing batches filled with empty ones, all masked out.
    """
    logits, labels, masks = [], [], []
    for batch in _equal_count(batches, spec, batch_size, world_size, device):
        batch = pad_batch(batch, batch_size).to(device)
        logits.append(model(batch.dense, batch.sparse).float().cpu())
        labels.append(batch.labels.cpu())
        masks.append(batch.label_mask.cpu())
    if not logits:
        logits, labels, masks = [torch.zeros(0, spec.num_tasks)], [torch.zeros(0, spec.num_tasks)], [torch.zeros(0, spec.num_tasks, dtype=torch.bool)]
    local = (torch.cat(logits), torch.cat(labels), torch.cat(masks))
    if world_size == 1:
        return local
    gathered: list | None = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(local, gathered, dst=0)
    if gathered is None:
        return None
    return tuple(torch.cat([g[i] for g in gathered]) for i in range(3))  # type: ignore[return-value]


def format_eval_line(step: int, epochs_done: float, total_epochs: int, metrics: dict[str, dict[str, float]]) -> str:
    """`eval step S (epoch E/N): ...`; E counts the epochs done, with a fraction when evaluated mid-epoch.
    Binary tasks show AUC, regression tasks their normalized MSE (`nmse`)."""
    def mean(key: str) -> float:
        vals = [m[key] for m in metrics.values() if key in m and m[key] == m[key]]
        return sum(vals) / len(vals) if vals else float("nan")

    per_task = " ".join(f"{name}={m[AUC]:.4f}" if AUC in m else f"{name}={NMSE} {m[NMSE]:.4f}"
                        for name, m in metrics.items())
    regression = any(NMSE in m for m in metrics.values())
    done = f"{epochs_done:.0f}" if float(epochs_done).is_integer() else f"{epochs_done:.2f}"
    return (f"eval step {step} (epoch {done}/{total_epochs}): mean AUC {mean(AUC):.4f}, mean logloss "
            f"{mean(LOGLOSS):.4f}" + (f", mean NMSE {mean(NMSE):.4f}" if regression else "") + f" | AUC {per_task}")


class TrainerEvaluation:
    """The trainer's evaluation on its eval set, between steps: the pipeline lets go of the model meanwhile."""

    def evaluate(self) -> dict[str, dict[str, float]] | None:
        if self.eval_data is None:
            return None
        self.pipeline.detach()
        self.dmp.eval()
        try:
            batch_size = self.config.data.eval_batch_size or self.config.data.batch_size
            self.eval_data.set_epoch(0)
            self.eval_data.load_state_dict(self.eval_data.position_after(0))
            statistics = eval_statistics(self.module.model, self.eval_data, self.spec, batch_size, self.device,
                                         self.env.world_size)
        finally:
            self.dmp.train()
            self._reattach()
        # all-reduced statistics: every rank computes the same last_eval (it goes into the checkpoint)
        metrics = metrics_by_task(statistics, self.spec.task_names)
        self.last_eval, self._evaluated_at = metrics, self.step
        if self.env.is_main:
            epochs_done = self.epoch + (self.step_in_epoch / self._steps_in_epoch if self._steps_in_epoch else 0)
            log.info(format_eval_line(self.step, epochs_done, self.config.train.epochs, metrics))
            for cb in self.callbacks:
                cb.on_eval(self, self.step, self.epoch, metrics)
        return metrics
