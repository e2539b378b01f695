"""Per-task metrics: exact offline NE, AUC, calibration, log loss, and paired-bootstrap model comparison."""

from recsys_mtl.metrics.offline import (
    Comparison, EvalReport, TaskMetrics, compare_models, evaluate_predictions, offline_auc, offline_ne, task_metrics,
)

__all__ = [
    "Comparison", "EvalReport", "TaskMetrics", "compare_models", "evaluate_predictions",
    "offline_auc", "offline_ne", "task_metrics",
]
