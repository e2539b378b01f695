"""Metric names: what a task of each type is scored with, as logged (`eval/<metric>/<task>`, `train/<metric>/<task>`).

Binary tasks: NE (normalized entropy), AUC, calibration, log loss.
Regression tasks, on the transformed label: NMSE (MSE / label variance = 1 - R^2), MSE, RMSE, MAE; and MAE_RAW on
the untransformed scale.
Each task has one "normalized error", lower is better: NE for binary tasks, NMSE for regression tasks;
comparisons, gates and experiment tables rank models by it.
"""

from __future__ import annotations

BINARY = "binary"
REGRESSION = "regression"

NE = "ne"
AUC = "auc"
CALIBRATION = "calibration"
LOGLOSS = "logloss"
BINARY_METRICS = (NE, AUC, CALIBRATION, LOGLOSS)
GAUC = "gauc"  # grouped AUC (recsys_mtl.metrics.grouped), where evaluation names a group column

NMSE = "nmse"
MSE = "mse"
RMSE = "rmse"
MAE = "mae"
MAE_RAW = "mae_raw"
REGRESSION_METRICS = (NMSE, MSE, RMSE, MAE, MAE_RAW)

COUNT = "count"
#: the label statistic shown beside each task: its base rate (binary) or its mean transformed label (regression)
BASE_RATE = "base_rate"
LABEL_MEAN = "label_mean"

NORMALIZED_ERRORS = (NE, NMSE)


def normalized_error_name(task_type: str) -> str:
    """"ne" for a binary task, "nmse" for a regression task."""
    if task_type == BINARY:
        return NE
    if task_type == REGRESSION:
        return NMSE
    raise ValueError(f"unknown task type {task_type!r}; expected {BINARY!r} or {REGRESSION!r}")


def normalized_error_label(task_types) -> str:
    """Column header for a column of normalized errors of these task types: "NE", "NMSE" or "NE|NMSE"."""
    kinds = sorted({normalized_error_name(t) for t in task_types}) or [NE]
    return "|".join(k.upper() for k in kinds)


__all__ = [
    "BINARY", "REGRESSION", "NE", "AUC", "CALIBRATION", "LOGLOSS", "BINARY_METRICS", "NMSE", "MSE", "RMSE", "MAE",
    "MAE_RAW", "REGRESSION_METRICS", "COUNT", "BASE_RATE", "LABEL_MEAN", "NORMALIZED_ERRORS", "normalized_error_name",
    "normalized_error_label",
]
