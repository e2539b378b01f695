"""MLflow tracking: rank 0's run, batched async metrics with an outage spool, provenance tags, plots, compare.

Importing this package does not import mlflow or matplotlib (seconds); they load on first use.
"""

from recsys_mtl.config.tracking import TrackingConfig, default_tracking_uri
from recsys_mtl.tracking.provenance import data_fingerprint, git_commit, package_versions, run_tags
from recsys_mtl.tracking.tracker import NullTracker, RunTracker, TrackingUnavailable, start_run

__all__ = [
    "TrackingConfig", "default_tracking_uri", "RunTracker", "NullTracker", "TrackingUnavailable", "start_run",
    "run_tags", "data_fingerprint", "git_commit", "package_versions",
]
