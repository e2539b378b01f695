"""Stream a dataset once and summarise it: rows, files, per-task label coverage and base rate (regression tasks:
the mean and standard deviation of the transformed label)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.data.stream import ParquetStream


@dataclasses.dataclass
class DataSummary:
    rows: int
    files: int
    row_groups: int
    batches: int
    seconds: float
    task_names: list[str]
    labelled: list[int]
    positives: list[float]  # sum of the labels (binary: positives)
    sparse_values_per_row: dict[str, float]
    squares: list[float] = dataclasses.field(default_factory=list)  # sum of squared labels
    task_types: list[str] = dataclasses.field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"{self.rows:,} rows in {self.files} files / {self.row_groups} row groups, "
            f"streamed as {self.batches} batches in {self.seconds:.2f} s ({self.rows / max(self.seconds, 1e-9):,.0f} rows/s)",
            f"{'task':<22} {'labelled':>9} {'base rate':>10}",
        ]
        types = self.task_types or ["binary"] * len(self.task_names)
        squares = self.squares or [0.0] * len(self.task_names)
        for name, lab, pos, sq, kind in zip(self.task_names, self.labelled, self.positives, squares, types):
            line = f"{name:<22} {lab / max(self.rows, 1):>9.1%} {pos / max(lab, 1):>10.4f}"
            if kind == "regression":
                mean = pos / max(lab, 1)
                line += f"  (regression: mean of the transformed label, std {max(sq / max(lab, 1) - mean ** 2, 0) ** 0.5:.4f})"
            lines.append(line)
        multi = {k: v for k, v in self.sparse_values_per_row.items() if v != 1.0}
        if multi:
            lines.append("multi-valued features (mean ids per row): " + ", ".join(f"{k} {v:.2f}" for k, v in multi.items()))
        return "\n".join(lines)


def summarize(path: str | Path, spec: FeatureSpec, batch_size: int = 8192) -> DataSummary:
    stream = ParquetStream(path, spec, batch_size, shuffle=False, drop_remainder=False)
    T = spec.num_tasks
    labelled = torch.zeros(T, dtype=torch.int64)
    positives = torch.zeros(T, dtype=torch.float64)
    squares = torch.zeros(T, dtype=torch.float64)
    lengths = torch.zeros(len(spec.sparse), dtype=torch.int64)
    rows = batches = 0
    start = time.perf_counter()
    for batch in stream:
        labelled += batch.label_mask.sum(0)
        labels = (batch.labels * batch.label_mask).double()
        positives += labels.sum(0)
        squares += labels.square().sum(0)
        lengths += batch.sparse.lengths().view(len(spec.sparse), -1).sum(1)
        rows += batch.batch_size
        batches += 1
    seconds = time.perf_counter() - start
    return DataSummary(
        rows=rows,
        files=len({u.path for u in stream.units}),
        row_groups=len(stream.units),
        batches=batches,
        seconds=seconds,
        task_names=spec.task_names,
        labelled=labelled.tolist(),
        positives=positives.tolist(),
        squares=squares.tolist(),
        task_types=spec.task_types,
        sparse_values_per_row={n: float(v) / max(rows, 1) for n, v in zip(spec.sparse_names, lengths.tolist())},
    )
