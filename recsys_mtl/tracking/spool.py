"""Local JSONL spool for what could not be delivered to the tracking store, and its upload.

One file per run, `<spool_dir>/<run_id>.jsonl`; each line is self-contained:
`{"tracking_uri", "run_id", "metrics": [[key, value, timestamp_ms, step], ...],
"params": {...}, "tags": {...}}`, or `{"tracking_uri", "run_id", "artifact": path,
"artifact_path": dir}`, or `{"tracking_uri", "run_id", "terminate": status}`.
Re-sending a line is harmless: MLflow drops a metric identical in key, value,
timestamp and step, and accepts a param logged again with the same value.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

#: MLflow error codes that mean "this will never be accepted" (retrying cannot help)
PERMANENT_ERRORS = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST", "MALFORMED_REQUEST",
})


def is_permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in PERMANENT_ERRORS


def append(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def deliver_record(client, record: dict[str, Any]) -> None:
    """Send one spool record through an MlflowClient (raises on failure)."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = record["run_id"]
    if "artifact" in record:
        if not Path(record["artifact"]).exists():
            log.warning("spooled artifact %s no longer exists; skipped", record["artifact"])
            return
        if Path(record["artifact"]).is_dir():  # a checkpoint directory: its files under artifact_path
            client.log_artifacts(run_id, record["artifact"], record.get("artifact_path"))
        else:
            client.log_artifact(run_id, record["artifact"], record.get("artifact_path"))
    elif "terminate" in record:
        client.set_terminated(run_id, record["terminate"])
    else:
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in record.get("metrics", [])],
            params=[Param(k, str(v)) for k, v in record.get("params", {}).items()],
            tags=[RunTag(k, str(v)) for k, v in record.get("tags", {}).items()],
        )


def drain(path: Path, send: Callable[[dict[str, Any]], None]) -> bool:
    """Send every line of `path` in order; delete the file when all are sent.

    On a transient failure the unsent lines are kept (atomic rewrite) and False is returned.
    A line rejected for good is moved to `<path>.rejected` so it cannot block the rest.
    """
    if not path.exists():
        return True
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: unreadable spool line %d skipped (a crash during a write?)", path, i + 1)
            continue
        try:
            send(record)
        except Exception as exc:  # noqa: BLE001 - anything the store raises
            if is_permanent(exc):
                log.error("%s: the tracking store rejected a spooled record for good (%s); kept in %s.rejected",
                          path, exc, path.name)
                append(path.with_name(path.name + ".rejected"), [dict(record, error=str(exc)[:500])])
                continue
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in lines[i:]))
            os.replace(tmp, path)
            return False
    path.unlink()
    return True


def flush_spool_dir(spool_dir: str | Path, tracking_uri: str | None = None) -> dict[str, bool]:
    """Upload every `*.jsonl` spool under `spool_dir` (to each line's own tracking URI unless one is given).

    Returns {file: fully uploaded}. This is what `recsys-mtl tracking flush-spool` runs.
    """
    from mlflow.tracking import MlflowClient

    clients: dict[str, Any] = {}

    def send(record: dict[str, Any]) -> None:
        uri = tracking_uri or record["tracking_uri"]
        if uri not in clients:
            clients[uri] = MlflowClient(tracking_uri=uri)
        deliver_record(clients[uri], record)

    return {str(p): drain(p, send) for p in sorted(Path(spool_dir).glob("*.jsonl"))}
