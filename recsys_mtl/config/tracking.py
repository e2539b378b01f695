"""Tracking settings (the `tracking:` section of a run config), loaded by the one config loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from recsys_mtl.config.loader import Where

#: MLflow's own limit for metrics in one log_batch call
MAX_METRICS_PER_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    #: any MLflow tracking URI; default: the embedded sqlite store `mlflow.db` in the working directory
    tracking_uri: str | None = None
    experiment: str = "recsys-mtl"
    #: where a new experiment keeps artifacts; default for local stores: `<cwd>/mlartifacts`
    #: (for an http server, the server decides)
    artifact_location: str | None = None
    #: the background thread sends what it has at least this often
    flush_interval_s: float = 2.0
    max_metrics_per_batch: int = MAX_METRICS_PER_BATCH
    #: first wait after a failed delivery; doubles up to retry_max_s
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    #: how long close() keeps retrying before leaving the rest in the spool
    close_timeout_s: float = 30.0
    #: per-request timeout for http stores (MLflow's default is 120 s with 7 retries)
    http_timeout_s: int = 10
    #: 0 turns system metrics off
    system_metrics_interval_s: float = 15.0
    #: training metrics are worth sending every n steps; see RunTracker.due(step). Delivery costs the
    #: training process's background thread ~100 us CPU a metric on sqlite, ~22 us over http (measured,
    #: 2 cores): 200 metrics every 100 steps of 10 ms is ~2% (sqlite) / ~0.5% (http) of one core.
    train_metrics_every_n_steps: int = 100
    #: render heatmaps of train/weight and train/group vectors at close()
    plots: bool = True
    #: run name in MLflow; default: the training output folder's name
    run_name: str | None = None
    #: streaming per-task NE, log loss, calibration (window + lifetime) and AUC (window) in training,
    #: TorchRec's metric classes updated every step, computed and logged every train_metrics_every_n_steps
    train_metrics: bool = True
    #: rows (all ranks) in the NE / log loss / calibration window
    train_metrics_window_rows: int = 100_000
    #: rows in the AUC window: TorchRec keeps their raw predictions and sorts them at each log
    #: (about 1 s per 400k rows x 32 tasks on one CPU core), so it is smaller; at least one global batch
    train_metrics_auc_window_rows: int = 16_384
    #: log the final checkpoint (with config and feature spec) as the run's `model/` artifact
    log_model: bool = True
    #: register the logged model under this name in the MLflow model registry (a new version per run)
    register_model: str | None = None
    #: a training resumed from a checkpoint (train.checkpoint.resume) continues the MLflow run recorded in
    #: `<output_dir>/tracking/run_id`, if the store still has it; false: every process start is a new run
    continue_run: bool = True

    def validate(self, where: Where) -> None:
        if self.tracking_uri and "://" not in self.tracking_uri and self.tracking_uri != "databricks":
            raise where.child("tracking_uri").error(
                f"{self.tracking_uri!r} is not a tracking URI: use sqlite:///ABSOLUTE/PATH/mlflow.db (the default is "
                "./mlflow.db) or http://HOST:PORT of an mlflow server")
        if not 1 <= self.max_metrics_per_batch <= MAX_METRICS_PER_BATCH:
            raise where.child("max_metrics_per_batch").error(
                f"must be between 1 and {MAX_METRICS_PER_BATCH} (MLflow's log_batch limit), got {self.max_metrics_per_batch}"
            )
        for name in ("flush_interval_s", "retry_initial_s", "retry_max_s", "close_timeout_s"):
            if getattr(self, name) <= 0:
                raise where.child(name).error(f"must be > 0, got {getattr(self, name)}")
        if self.http_timeout_s < 1:
            raise where.child("http_timeout_s").error(f"must be >= 1, got {self.http_timeout_s}")
        if self.system_metrics_interval_s < 0:
            raise where.child("system_metrics_interval_s").error(f"must be >= 0 (0 = off), got {self.system_metrics_interval_s}")
        for name in ("train_metrics_window_rows", "train_metrics_auc_window_rows"):
            if getattr(self, name) < 1:
                raise where.child(name).error(f"must be >= 1, got {getattr(self, name)}")
        if self.register_model is not None and not self.log_model:
            raise where.child("register_model").error("needs log_model: true (the version's source is the logged model)")
        if self.train_metrics_every_n_steps < 1:
            raise where.child("train_metrics_every_n_steps").error(f"must be >= 1, got {self.train_metrics_every_n_steps}")
        if self.retry_max_s < self.retry_initial_s:
            raise where.child("retry_max_s").error(f"must be >= retry_initial_s ({self.retry_initial_s}), got {self.retry_max_s}")

    def resolved_uri(self) -> str:
        """The tracking URI, with the default sqlite file made absolute (a later chdir must not move it)."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"

    def resolved_artifact_location(self) -> str | None:
        if self.artifact_location:
            return self.artifact_location
        if is_http(self.resolved_uri()):
            return None
        return (Path.cwd().resolve() / "mlartifacts").as_uri()


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def default_tracking_uri() -> str:
    return TrackingConfig().resolved_uri()
