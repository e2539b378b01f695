"""Streaming per-task metrics during training: TorchRec's metric classes, fused across tasks.

    metrics = StreamingTaskMetrics(task_names, batch_size=512, window_rows=100_000)
    metrics.update(logits, labels, label_mask)     # every step, every rank (device ops only)
    values = metrics.compute()                     # when logging; a collective when world_size > 1
    # {"train/ne": [T], "train/ne_lifetime": [T], "train/auc": [T], ...}

Built from `NEMetric` (with log loss), `CalibrationMetric` and `AUCMetric` in
`RecComputeMode.FUSED_TASKS_COMPUTATION`: one [T, B] update per metric per step,
no loop over tasks. Predictions are sigmoid(logits), weights are the label mask, so
unlabelled rows count 0. Regression tasks (`task_types`) get TorchRec's `MSEMetric` (with R^2:
nmse = 1 - R^2 = MSE / label variance) and `MAEMetric` on the head's output, fused over the
regression tasks the same way; each value is [T] with NaN for the tasks of the other type. NE, log loss and calibration have a window value (the last
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

from recsys_mtl.metrics.names import AUC, BINARY, CALIBRATION, LOGLOSS, MAE, MSE, NE, NMSE, REGRESSION, RMSE

LIFETIME = "_lifetime"  # suffix of our name for a lifetime value ("ne_lifetime"); the plain name is the window value
#: TorchRec metric classes by the name this module keys them with (also the keys of `state_dict`, in checkpoints)
_NE_KIND, _CALIBRATION_KIND, _AUC_KIND, _MSE_KIND, _MAE_KIND = NE, CALIBRATION, AUC, MSE, MAE


def _reports(pairs: list[tuple[str, str, str]], *, lifetime: bool = True) -> dict[str, tuple[str, str, str]]:
    """our name (logged as train/<name>/<task>) -> (metric kind, TorchRec `MetricName` member, `MetricPrefix` member),
    for the window value and, with `lifetime`, the lifetime value (<name>_lifetime)."""
    out = {}
    for ours, kind, torchrec_name in pairs:
        out[ours] = (kind, torchrec_name, "WINDOW")
        if lifetime:
            out[ours + LIFETIME] = (kind, torchrec_name, "LIFETIME")
    return out


_REPORTS = {
    **_reports([(NE, _NE_KIND, "NE"), (LOGLOSS, _NE_KIND, "LOG_LOSS"), (CALIBRATION, _CALIBRATION_KIND, "CALIBRATION")]),
    **_reports([(AUC, _AUC_KIND, "AUC")], lifetime=False),  # TorchRec's AUC is windowed only
}
_REGRESSION_REPORTS = _reports([(MSE, _MSE_KIND, "MSE"), (RMSE, _MSE_KIND, "RMSE"),
                                (NMSE, _MSE_KIND, "R_SQUARED"),  # nmse = 1 - R^2
                                (MAE, _MAE_KIND, "MAE")])


class StreamingTaskMetrics:
    """Per-task NE, log loss, calibration (window + lifetime) and AUC (window), TorchRec-fused.

    Every rank must call `update` each step and `compute` at the same steps (it syncs
    states across ranks); the values are meaningful on rank 0.
    """

    def __init__(self, task_names: list[str], batch_size: int, *, window_rows: int = 100_000,
                 auc_window_rows: int | None = None, world_size: int = 1, rank: int = 0, process_group: dist.ProcessGroup | None = None,
                 device: torch.device | str = "cpu", auc: bool = True, task_types: list[str] | None = None) -> None:
        from torchrec.metrics.auc import AUCMetric
        from torchrec.metrics.calibration import CalibrationMetric
        from torchrec.metrics.mae import MAEMetric
        from torchrec.metrics.metrics_config import RecComputeMode, RecTaskInfo
        from torchrec.metrics.mse import MSEMetric
        from torchrec.metrics.ne import NEMetric

        auc_window_rows = window_rows if auc_window_rows is None else auc_window_rows
        for name, rows in (("window_rows", window_rows), ("auc_window_rows", auc_window_rows)):
            if rows < batch_size * world_size:
                raise ValueError(f"{name} ({rows}) must be at least one global batch ({batch_size} x {world_size} ranks)")
        self.task_names = list(task_names)
        self.num_tasks = len(self.task_names)
        types = list(task_types) if task_types is not None else [BINARY] * self.num_tasks
        if len(types) != self.num_tasks:
            raise ValueError(f"task_types has {len(types)} entries for {self.num_tasks} tasks")
        self._device = torch.device(device)
        binary = [i for i, t in enumerate(types) if t != REGRESSION]
        regression = [i for i, t in enumerate(types) if t == REGRESSION]
        # the [T] columns each group of metrics reads (None: all of them, no gather)
        self._binary_index = None if not regression else torch.tensor(binary, dtype=torch.long, device=self._device)
        self._regression_index = torch.tensor(regression, dtype=torch.long, device=self._device) if regression else None
        self._groups = {BINARY: binary, REGRESSION: regression}

        def common(group: list[int], rows: int) -> dict:
            tasks = [RecTaskInfo(name=self.task_names[i], label_name=self.task_names[i],
                                 prediction_name=self.task_names[i], weight_name=self.task_names[i]) for i in group]
            return dict(world_size=world_size, my_rank=rank, batch_size=batch_size, tasks=tasks,
                        compute_mode=RecComputeMode.FUSED_TASKS_COMPUTATION, window_size=rows,
                        process_group=process_group)

        by_kind = {}
        if binary:
            by_kind[_NE_KIND] = NEMetric(**common(binary, window_rows), include_logloss=True)
            by_kind[_CALIBRATION_KIND] = CalibrationMetric(**common(binary, window_rows))
            if auc:
                by_kind[_AUC_KIND] = AUCMetric(**common(binary, auc_window_rows))
        if regression:
            by_kind[_MSE_KIND] = MSEMetric(**common(regression, window_rows), include_r_squared=True)
            by_kind[_MAE_KIND] = MAEMetric(**common(regression, window_rows))
        self._by_kind = {kind: m.to(device) for kind, m in by_kind.items()}
        self._metrics = list(self._by_kind.values())
        self._world_size, self._process_group = world_size, process_group
        self._keys = self._report_keys(by_kind)
        self.updates = 0

    def _report_keys(self, by_kind: dict) -> dict[str, tuple[list[int], list[str]]]:
        """(task columns, TorchRec's result key of each) of every name of ours, e.g. `ne-ctr|window_ne`."""
        from torchrec.metrics.metrics_namespace import MetricName, MetricPrefix, compose_metric_key

        out = {}
        for group, reports in ((BINARY, _REPORTS), (REGRESSION, _REGRESSION_REPORTS)):
            for ours, (kind, name, prefix) in reports.items():
                if kind in by_kind:
                    columns = self._groups[group]
                    out[ours] = (columns, [compose_metric_key(by_kind[kind]._namespace, self.task_names[i],
                                                              MetricName[name], MetricPrefix[prefix]) for i in columns])
        return out

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
        """logits, labels, mask: [B, T] (the model's outputs and the batch's labels)."""
        outputs = logits.detach().float()
        labels = labels.to(outputs.device, torch.float32, non_blocking=True)
        weights = mask.to(outputs.device, torch.float32, non_blocking=True)

        def columns(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
            return (x if index is None else x.index_select(1, index)).t().contiguous()

        if self._groups[BINARY]:
            b = self._binary_index
            inputs = dict(predictions=torch.sigmoid(columns(outputs, b)), labels=columns(labels, b),
                          weights=columns(weights, b))
            for kind in (_NE_KIND, _CALIBRATION_KIND, _AUC_KIND):
                if kind in self._by_kind:
                    self._by_kind[kind].update(**inputs)
        if self._groups[REGRESSION]:
            r = self._regression_index
            inputs = dict(predictions=columns(outputs, r), labels=columns(labels, r), weights=columns(weights, r))
            for kind in (_MSE_KIND, _MAE_KIND):
                self._by_kind[kind].update(**inputs)
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
        for ours, (columns, keys) in self._keys.items():
            if not all(k in raw for k in keys):  # rank != 0 gets nothing back from TorchRec
                continue
            values = torch.stack([raw[k].reshape(()).double() for k in keys])
            base = ours.removesuffix(LIFETIME)
            values = values * math.log(2) if base == LOGLOSS else values
            values = 1 - values if base == NMSE else values  # from R^2
            values = torch.where(defined[ours].to(values.device), values, torch.full_like(values, math.nan))
            full = torch.full((self.num_tasks,), math.nan, dtype=values.dtype, device=values.device)
            full[columns] = values  # NaN for the tasks of the other type
            out[ours] = full
        return out

    def _defined(self) -> dict[str, torch.Tensor]:
        """Per report, [its tasks] bool: whether its rows (all ranks') hold what the value needs. A collective."""
        parts, regression_parts = [], []
        if _NE_KIND in self._by_kind:
            ne = self._by_kind[_NE_KIND]._metrics_computations[0]  # the labelled positives/negatives of NE's states
            parts = [ne.window_pos_labels, ne.window_neg_labels, ne.pos_labels, ne.neg_labels]
            if _AUC_KIND in self._by_kind:  # AUC keeps its (smaller) window's raw labels and weights
                auc = self._by_kind[_AUC_KIND]._metrics_computations[0]
                labels, weights = torch.cat(list(auc.labels), dim=-1), torch.cat(list(auc.weights), dim=-1)
                parts += [(labels * weights).sum(-1), ((1 - labels) * weights).sum(-1)]
        if _MSE_KIND in self._by_kind:  # labelled rows and the label's sums, window and lifetime
            mse = self._by_kind[_MSE_KIND]._metrics_computations[0]
            for prefix in ("window", "lifetime"):
                state = (mse.get_window_state if prefix == "window" else lambda name: getattr(mse, name))
                regression_parts += [state("weighted_num_samples"), state("label_sum"), state("label_squared_sum")]
        n_binary = len(parts)
        flat = [p.reshape(-1).double() for p in parts + regression_parts]
        sizes = [len(p) for p in flat]
        stats = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64, device=self._device)
        if self._world_size > 1:
            dist.all_reduce(stats, group=self._process_group)
        values = list(stats.split(sizes)) if flat else []
        out = {}
        if n_binary:
            counts = torch.stack(values[:n_binary])
            pos, neg = counts[0::2] > 0, counts[1::2] > 0  # [window, lifetime, (auc window)] x T
            for ours in _REPORTS:
                if ours not in self._keys:
                    continue
                i = 2 if ours == AUC else int(ours.endswith(LIFETIME))
                base = ours.removesuffix(LIFETIME)
                out[ours] = (pos[i] & neg[i] if base in (NE, AUC) else pos[i] if base == CALIBRATION
                             else pos[i] | neg[i])  # log loss: a labelled row
        if regression_parts:
            for i, prefix in enumerate(("window", "lifetime")):
                n, total, total_sq = values[n_binary + 3 * i: n_binary + 3 * i + 3]
                labelled = n > 0
                mean = total / n.clamp_min(1e-12)
                variance = total_sq / n.clamp_min(1e-12) - mean * mean
                varied = labelled & (variance > 1e-12 * mean.square().clamp_min(1.0))
                suffix = "" if prefix == "window" else LIFETIME
                for name in (MSE, RMSE, MAE):
                    out[name + suffix] = labelled
                out[NMSE + suffix] = varied
        return out

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's lifetime states (TorchRec's persistent ones), on CPU: {metric kind: its state_dict}."""
        return {kind: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                for kind, m in self._by_kind.items() if kind != _AUC_KIND}  # AUC: windowed only

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
