"""Streaming per-task metrics during training: TorchRec's metric classes, fused across tasks.

    metrics = StreamingTaskMetrics(task_names, batch_size=512, window_rows=100_000)
    metrics.update(logits, labels, label_mask)     # every step, every rank (device ops only)
    values = metrics.compute()                     # when logging; a collective when world_size > 1
    # {"train/ne": [T], "train/ne_lifetime": [T], "train/auc": [T], ...}

Built from `NEMetric` (with log loss), `CalibrationMetric` and `AUCMetric` in
`RecComputeMode.FUSED_TASKS_COMPUTATION`: one [T, B] update per metric per step,
no loop over tasks. Predictions are sigmoid(logits), weights are the label mask, so
unlabelled rows count 0. NE, log loss and calibration have a window value (the last
`window_rows` rows, counting every row of a batch) and a lifetime value; AUC is
windowed only (TorchRec keeps the window's raw predictions and sorts them at compute,
so its window, `auc_window_rows`, is kept smaller). Lifetime values cover the whole
training: their states (each rank's own) go into checkpoints through `state_dict`, as
TorchRec checkpoints them; the windows start empty again on resume, as in TorchRec.

TorchRec's log loss is in bits (log2); it is reported here in nats, like
`recsys_mtl.metrics.offline`. NE does not depend on the base.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

#: our name (logged as train/<name>/<task>) -> (TorchRec metric class, its report name, prefix)
_REPORTS = {
    "ne": ("ne", "ne", "window_"), "ne_lifetime": ("ne", "ne", "lifetime_"),
    "logloss": ("ne", "logloss", "window_"), "logloss_lifetime": ("ne", "logloss", "lifetime_"),
    "calibration": ("calibration", "calibration", "window_"),
    "calibration_lifetime": ("calibration", "calibration", "lifetime_"),
    "auc": ("auc", "auc", "window_"),
}


class StreamingTaskMetrics:
    """Per-task NE, log loss, calibration (window + lifetime) and AUC (window), TorchRec-fused.

    Every rank must call `update` each step and `compute` at the same steps (it syncs
    states across ranks); the values are meaningful on rank 0.
    """

    def __init__(self, task_names: list[str], batch_size: int, *, window_rows: int = 100_000,
                 auc_window_rows: int | None = None, world_size: int = 1, rank: int = 0, process_group: dist.ProcessGroup | None = None,
                 device: torch.device | str = "cpu", auc: bool = True) -> None:
        from torchrec.metrics.auc import AUCMetric
        from torchrec.metrics.calibration import CalibrationMetric
        from torchrec.metrics.metrics_config import RecComputeMode, RecTaskInfo
        from torchrec.metrics.ne import NEMetric

        auc_window_rows = window_rows if auc_window_rows is None else auc_window_rows
        for name, rows in (("window_rows", window_rows), ("auc_window_rows", auc_window_rows)):
            if rows < batch_size * world_size:
                raise ValueError(f"{name} ({rows}) must be at least one global batch ({batch_size} x {world_size} ranks)")
        self.task_names = list(task_names)
        self.num_tasks = len(self.task_names)
        tasks = [RecTaskInfo(name=n, label_name=n, prediction_name=n, weight_name=n) for n in self.task_names]
        common = dict(world_size=world_size, my_rank=rank, batch_size=batch_size, tasks=tasks,
                      compute_mode=RecComputeMode.FUSED_TASKS_COMPUTATION, window_size=window_rows,
                      process_group=process_group)
        by_kind = {"ne": NEMetric(**common, include_logloss=True), "calibration": CalibrationMetric(**common)}
        if auc:
            by_kind["auc"] = AUCMetric(**dict(common, window_size=auc_window_rows))
        self._by_kind = {kind: m.to(device) for kind, m in by_kind.items()}
        self._metrics = list(self._by_kind.values())
        self._world_size, self._process_group = world_size, process_group
        self._device = torch.device(device)
        self._keys = self._report_keys(by_kind)
        self.updates = 0

    def _report_keys(self, by_kind: dict) -> dict[str, list[str]]:
        """TorchRec's result key of every (our name, task), e.g. `ne-ctr|window_ne`."""
        from torchrec.metrics.metrics_namespace import MetricName, MetricPrefix, compose_metric_key

        out = {}
        for ours, (kind, name, prefix) in _REPORTS.items():
            if kind in by_kind:
                out[ours] = [compose_metric_key(by_kind[kind]._namespace, task, MetricName(name), MetricPrefix(prefix))
                             for task in self.task_names]
        return out

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
        """logits, labels, mask: [B, T] (the model's outputs and the batch's labels)."""
        predictions = torch.sigmoid(logits.detach().float()).t().contiguous()
        labels = labels.to(predictions.device, torch.float32, non_blocking=True).t().contiguous()
        weights = mask.to(predictions.device, torch.float32, non_blocking=True).t().contiguous()
        for m in self._metrics:
            m.update(predictions=predictions, labels=labels, weights=weights)
        self.updates += 1

    @torch.no_grad()
    def compute(self) -> dict[str, torch.Tensor]:
        """{"ne": [T], "ne_lifetime": [T], ...} (window values unless `_lifetime`); log loss in nats.

        NaN where the value is undefined, as in the offline metrics: NE and AUC need both classes among the
        rows counted, calibration a positive, log loss a labelled row (TorchRec reports 0, 0.5 or NE in the
        billions there).
        """
        defined = self._defined()
        raw: dict[str, torch.Tensor] = {}
        for m in self._metrics:
            try:
                raw.update(m.compute())
            except ValueError as e:
                if "frozen dataclass" not in str(e):
                    raise
                import torchmetrics
                import torchrec

                raise RuntimeError(
                    f"train metrics: TorchRec {torchrec.__version__}'s metrics do not run on torchmetrics "
                    f"{torchmetrics.__version__} (its compute() rejects TorchRec's frozen metric reports). Install "
                    "the torchmetrics TorchRec pins (pip install torchmetrics==1.0.3, as requirements/cpu.txt does), "
                    "or set tracking.train_metrics: false"
                ) from e
        out = {}
        for ours, keys in self._keys.items():
            if not all(k in raw for k in keys):  # rank != 0 gets nothing back from TorchRec
                continue
            values = torch.stack([raw[k].reshape(()).double() for k in keys])
            values = values * math.log(2) if ours.startswith("logloss") else values
            out[ours] = torch.where(defined[ours].to(values.device), values, torch.full_like(values, math.nan))
        return out

    def _defined(self) -> dict[str, torch.Tensor]:
        """Per report, [T] bool: whether its rows (all ranks') hold what the value needs. A collective."""
        ne = self._by_kind["ne"]._metrics_computations[0]  # the labelled positives/negatives of NE's states
        parts = [ne.window_pos_labels, ne.window_neg_labels, ne.pos_labels, ne.neg_labels]
        if "auc" in self._by_kind:  # AUC keeps its (smaller) window's raw labels and weights
            auc = self._by_kind["auc"]._metrics_computations[0]
            labels, weights = torch.cat(list(auc.labels), dim=-1), torch.cat(list(auc.weights), dim=-1)
            parts += [(labels * weights).sum(-1), ((1 - labels) * weights).sum(-1)]
        counts = torch.stack([p.reshape(-1).double() for p in parts])
        if self._world_size > 1:
            dist.all_reduce(counts, group=self._process_group)
        pos, neg = counts[0::2] > 0, counts[1::2] > 0  # [window, lifetime, (auc window)] x T
        out = {}
        for ours in self._keys:
            i = 2 if ours == "auc" else int(ours.endswith("_lifetime"))
            kind = ours.removesuffix("_lifetime")
            out[ours] = pos[i] & neg[i] if kind in ("ne", "auc") else pos[i] if kind == "calibration" else pos[i] | neg[i]
        return out

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's lifetime states (TorchRec's persistent ones), on CPU: {metric kind: its state_dict}."""
        return {kind: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                for kind, m in self._by_kind.items() if kind != "auc"}  # AUC: windowed only

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Continue the lifetime values from `state_dict()` of the same rank; the windows start empty."""
        for kind, values in state.items():
            # torchmetrics sets the states to the tensors given, on their device: move them to this one
            self._by_kind[kind].load_state_dict({k: v.to(self._device) for k, v in values.items()})

    def reset(self) -> None:
        for m in self._metrics:
            m.reset()
        self.updates = 0


__all__ = ["StreamingTaskMetrics"]
