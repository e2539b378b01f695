"""RunTracker: rank 0's MLflow run, with batched, asynchronous, outage-proof metric logging.

The trainer needs three calls:

    tracker = RunTracker.start(cfg.tracking, run_name=name, config_obj=cfg, artifacts=[spec_path],
                               data_paths=[train_path], work_dir=out_dir)    # NullTracker on rank != 0
    if tracker.due(step): tracker.log_vector(step, "train/loss", task_names, losses)  # microseconds
    tracker.close()                                                          # or `with RunTracker.start(...)`

`log_metrics` / `log_vector` only put a tuple on a queue. A background thread turns
tensors into floats, batches up to 1000 metrics per `MlflowClient.log_batch`, and when
the store fails it appends the batches to a JSONL spool under `work_dir` and retries
with exponential backoff; when the store answers again the spool is uploaded first.
What close() cannot deliver stays in the spool, and is uploaded by the next
`RunTracker.start` with the same work_dir or by `recsys-mtl tracking flush-spool DIR`.

Tensors are read on the background thread, later: do not modify a logged tensor in
place afterwards (log a fresh tensor or a `.clone()`).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from recsys_mtl.tracking import spool
from recsys_mtl.config.tracking import TrackingConfig
from recsys_mtl.tracking.system_metrics import SystemSampler

log = logging.getLogger(__name__)

SPOOL_DIRNAME = "mlflow_spool"
#: vectors logged under these prefixes are kept (decimated) and drawn as heatmaps at close()
PLOTTED_PREFIXES = ("train/weight", "train/group")
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE_CHARS = 6000


class TrackingUnavailable(RuntimeError):
    """The run could not be created in the tracking store at start."""

    exit_code = 2  # the CLI prints it as one line: a setting to change (the URI), or the store to start


def _rank_from_env() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


RESUMED_AT_TAG = "recsys_mtl.resumed_at_steps"


def _reopen(client, run_id: str, experiment_id: str, experiment: str):
    """The run `run_id`, set RUNNING again, if it can be continued; None (with a warning) if not."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:  # any other store error propagates (TrackingUnavailable)
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        log.warning("cannot continue MLflow run %s (not in this store); starting a new run", run_id)
        return None
    why = None
    if run.info.lifecycle_stage != "active":
        why = "it was deleted"
    elif run.info.experiment_id != experiment_id:
        why = f"it belongs to experiment id {run.info.experiment_id}, not {experiment!r}"
    if why:
        log.warning("cannot continue MLflow run %s (%s); starting a new run", run_id, why)
        return None
    client.update_run(run_id, status="RUNNING")
    return run


def _params_on_continue(run, params: Mapping[str, Any], step: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(the params a continued run can still take: new keys only, tags recording the resume and what changed)."""
    existing = run.data.params
    new, changed = {}, []
    for key, value in params.items():
        text = str(value)[:MAX_PARAM_VALUE_CHARS]
        if str(key) not in existing:
            new[key] = value
        elif existing[str(key)] != text:
            changed.append(f"{key}: {existing[str(key)]} -> {text}")
    earlier = run.data.tags.get(RESUMED_AT_TAG)
    tags = {RESUMED_AT_TAG: f"{earlier},{step}" if earlier else str(step)}
    if changed:
        # the trainer has already warned with each changed setting (from the checkpoint's config)
        log.info("continued MLflow run %s keeps its first values of %d changed param(s); they are listed in the "
                 "tag recsys_mtl.resume.step-%d.changed_params", run.info.run_id, len(changed), step)
        tags[f"recsys_mtl.resume.step-{step}.changed_params"] = "\n".join(changed)[:MAX_PARAM_VALUE_CHARS]
    return new, tags


def _logged_after(client, run_id: str, step: int) -> frozenset[tuple[str, int]]:
    """(metric, step) pairs of run `run_id` past `step` (system metrics aside: they are sampled by time)."""
    from mlflow.exceptions import MlflowException

    try:
        keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
        return frozenset((k, m.step) for k in keys for m in client.get_metric_history(run_id, k) if m.step > step)
    except MlflowException as exc:  # a store that answered create/reopen a moment ago: rare; duplicates, not loss
        log.warning("could not read run %s's metrics past step %d (%s): steps after it may appear twice", run_id,
                    step, str(exc)[:200])
        return frozenset()


class NullTracker:
    """What ranks other than 0 (and disabled tracking) get: every call does nothing."""

    run_id: str | None = None
    spool_path: Path | None = None

    def due(self, step: int) -> bool:
        return False

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def log_vector(self, step: int, prefix: str, names: Sequence[str], values: Any, skip_non_finite: bool = False) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_task_types(self, task_types: Mapping[str, str]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")


def metric_name_ok(key: str) -> bool:
    """Whether MLflow takes `key` as a metric name (its own check, and its 250-character limit)."""
    try:
        from mlflow.utils.validation import _validate_metric_name

        _validate_metric_name(key)
        return len(key) <= 250
    except ImportError:
        return True
    except Exception:  # noqa: BLE001 - MlflowException: invalid name
        return False


def check_task_names(task_names: Sequence[str], spec_name: str) -> None:
    """ConfigError naming the tasks whose metrics MLflow would drop (checked with the longest name logged per task)."""
    from recsys_mtl.config.loader import ConfigError

    bad = [t for t in task_names if not metric_name_ok(f"eval/rel_ne_change_vs_champion/{t}")]
    if bad:
        raise ConfigError(
            f"feature spec {spec_name!r}: task name(s) {', '.join(map(repr, bad))} cannot end an MLflow metric name "
            "(letters, digits, _ - . space : and / only, no empty or '.' path parts, 219 characters at most): rename "
            "the task (its label: keeps the column), or do not track (tracking.enabled: false, or evaluate --no-log)")


class _VectorHistory:
    """Per-step vectors for plots, decimated by 2 whenever more than `max_points` steps are held."""

    def __init__(self, names: Sequence[str], max_points: int = 1000) -> None:
        self.names = list(names)
        self.steps: list[int] = []
        self.rows: list[list[float]] = []
        self.stride = 1
        self.max_points = max_points

    def add(self, step: int, values: list[float]) -> None:
        if step % self.stride:
            return
        self.steps.append(step)
        self.rows.append(values)
        if len(self.steps) > self.max_points:
            self.stride *= 2
            keep = [i for i, s in enumerate(self.steps) if s % self.stride == 0]
            self.steps = [self.steps[i] for i in keep]
            self.rows = [self.rows[i] for i in keep]


class RunTracker(NullTracker):
    def __init__(self, client, run_id: str, config: TrackingConfig, tracking_uri: str, work_dir: Path,
                 resumed_at_step: int | None = None) -> None:
        self.client = client
        self.run_id = run_id
        #: the step a continued run resumed at (None for a new run): plots start from the store's history up to it
        self.resumed_at_step = resumed_at_step
        self.config = config
        self.tracking_uri = tracking_uri
        self.work_dir = work_dir
        self.spool_path = work_dir / SPOOL_DIRNAME / f"{run_id}.jsonl"
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._metrics: list[tuple[str, float, int, int]] = []
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._artifacts: list[tuple[str, str | None]] = []
        self._histories: dict[str, _VectorHistory] = {}
        self._task_types: dict[str, str] = {}  # task -> "binary" / "regression", for the plots' labels
        self._controls: list[tuple] = []
        self._name_ok: dict[str, bool] = {}
        self._key_cache: dict[tuple, list[str | None]] = {}
        self._last_step = 0
        #: (metric, step) pairs the store holds already (a continued run's, past its checkpoint): not logged again
        self.already_logged: frozenset[tuple[str, int]] = frozenset()
        self._retry_at = 0.0  # monotonic time before which the store is not tried again
        self._backoff = config.retry_initial_s
        self._closed = False
        self.delivered_metrics = 0
        self.spooled_metrics = 0
        self.worker_cpu_s = 0.0  # CPU time the background thread has used (it shares the GIL with training)
        self._sampler = SystemSampler() if config.system_metrics_interval_s > 0 else None
        self._thread = threading.Thread(target=self._run, name=f"mlflow-tracker-{run_id[:8]}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ construction

    @classmethod
    def start(cls, config: TrackingConfig | None = None, *, run_name: str | None = None,
              params: Mapping[str, Any] | None = None, config_obj: Any = None,
              tags: Mapping[str, Any] | None = None, artifacts: Sequence[str | Path] = (),
              data_paths: Sequence[str | Path] = (), work_dir: str | Path = ".",
              rank: int | None = None, continue_run_id: str | None = None,
              resumed_at_step: int | None = None) -> "RunTracker | NullTracker":
        """Create the MLflow run (rank 0 only) and return its tracker.

        `continue_run_id` (a training resumed from a checkpoint at `resumed_at_step`): reopen that run instead,
        if it is still in the store, active, in the same experiment; otherwise warn and create a new one. A
        continued run keeps its first params: new keys are added, and keys whose value changed (e.g.
        `train.checkpoint.resume`) are listed in the tag `recsys_mtl.resume.step-N.changed_params` (MLflow
        refuses to change a param). Its start-time artifacts go under `resumes/step-N/`.

        `config_obj` (a config dataclass or mapping) is logged flattened as params and in full as
        the artifact `config.yaml`; `params` adds more. Provenance tags (git commit, package versions,
        and a fingerprint of `data_paths`) are always set; `tags` adds to or overrides them.
        `artifacts` are files (config, feature spec) uploaded in the background. Undelivered metrics
        are spooled under `work_dir/mlflow_spool/`. Raises TrackingUnavailable if the store cannot
        create the run.
        """
        config = config or TrackingConfig()
        rank = _rank_from_env() if rank is None else rank
        if rank != 0 or not config.enabled:
            return NullTracker()
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = config.resolved_uri()
        # Our thread retries with backoff and spools; MLflow's own HTTP retries (7, up to 120 s each) would hold
        # a batch for minutes. Set once for the process, unless the user set them, whatever this run's store:
        # an earlier run's spool in work_dir may be for an HTTP store, uploaded below before this run starts.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(config.http_timeout_s))
        from mlflow.tracking import MlflowClient  # lazy: `import mlflow` costs seconds

        from recsys_mtl.tracking.sqlite_store import check_sqlite_store, quiet_sqlalchemy_dump

        check_sqlite_store(uri, "tracking.tracking_uri")
        work_dir = Path(work_dir).resolve()
        spool_dir = work_dir / SPOOL_DIRNAME
        try:
            with quiet_sqlalchemy_dump():  # the one line below says what failed
                client = MlflowClient(tracking_uri=uri)
                exp = client.get_experiment_by_name(config.experiment)
                if exp is None:
                    exp_id = client.create_experiment(config.experiment,
                                                      artifact_location=config.resolved_artifact_location())
                else:
                    exp_id = exp.experiment_id
                run = _reopen(client, continue_run_id, exp_id, config.experiment) if continue_run_id else None
                if run is None:
                    run = client.create_run(exp_id, run_name=run_name)
        except Exception as exc:  # noqa: BLE001 - any store error
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise TrackingUnavailable(
                f"tracking.tracking_uri {uri}: cannot create an MLflow run in experiment {config.experiment!r} "
                f"({reason}); check the URI and that the store is up, or set tracking.enabled: false"
            ) from exc
        continued = run.info.run_id == continue_run_id
        step = resumed_at_step or 0
        artifact_dir = f"resumes/step-{step}" if continued else None
        if spool_dir.is_dir():  # leftovers of an earlier run in this work dir
            for path, ok in spool.flush_spool_dir(spool_dir).items():
                log.info("uploaded spool %s" if ok else "spool %s still not fully uploaded", path)
        tracker = cls(client, run.info.run_id, config, uri, work_dir, resumed_at_step=step if continued else None)
        if continued:  # after the spool upload above: what the interrupted process delivered past its checkpoint
            tracker.already_logged = _logged_after(client, run.info.run_id, step)
        all_params: dict[str, Any] = {}
        if config_obj is not None:
            from recsys_mtl.config.loader import flatten, to_yaml

            all_params.update(flatten(config_obj))
            cfg_path = work_dir / "tracking" / "config.yaml"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(to_yaml(config_obj))
            tracker.log_artifact(cfg_path, artifact_dir)
        all_params.update(params or {})
        resume_tags: dict[str, str] = {}
        if continued:
            all_params, resume_tags = _params_on_continue(run, all_params, step)
        if all_params:
            tracker.log_params(all_params)
        from recsys_mtl.tracking.provenance import run_tags

        tracker.set_tags({**run_tags(data_paths), **(tags or {}), **resume_tags})
        for path in artifacts:
            tracker.log_artifact(path, artifact_dir)
        log.info("MLflow run %s (experiment %r) at %s%s", tracker.run_id, config.experiment, uri,
                 f": continued at step {step}" if continued else "")
        return tracker

    # ------------------------------------------------------------ caller side (cheap)

    def due(self, step: int) -> bool:
        """Whether training metrics of `step` are worth logging (train_metrics_every_n_steps)."""
        return step % self.config.train_metrics_every_n_steps == 0

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Enqueue {name: float | 0-d tensor} for `step`; never blocks, never raises on store errors."""
        self._queue.put(("m", step, int(time.time() * 1000), metrics))

    def log_vector(self, step: int, prefix: str, names: Sequence[str], values: Any, skip_non_finite: bool = False) -> None:
        """Enqueue a [T] tensor/sequence as `<prefix>/<name>` metrics (one item, one device sync later);
        `skip_non_finite` leaves out NaN/inf entries (values that are undefined, not broken)."""
        self._queue.put(("v", step, int(time.time() * 1000), prefix, names, values, skip_non_finite))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._queue.put(("p", dict(params)))

    def set_task_types(self, task_types: Mapping[str, str]) -> None:
        """Task -> "binary" / "regression": the per-task plots mark regression tasks among binary ones."""
        self._task_types = dict(task_types)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._queue.put(("t", dict(tags)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._queue.put(("a", str(Path(path).resolve()), artifact_path))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged so far is delivered or spooled; True if nothing is left in the spool."""
        if self._closed:
            return not self.spool_path.exists()
        done = threading.Event()
        self._queue.put(("flush", done))
        done.wait(timeout)
        return done.is_set() and not self.spool_path.exists()

    def close(self, status: str = "FINISHED") -> None:
        """Deliver the rest (retrying up to close_timeout_s), end the run; what is left stays in the spool."""
        if self._closed:
            return
        self._closed = True
        done = threading.Event()
        self._queue.put(("close", done, status))
        done.wait(self.config.close_timeout_s + self.config.http_timeout_s + 10)
        if self.spool_path.exists():
            log.warning("tracking store unreachable: undelivered metrics kept in %s; upload them with "
                        "`recsys-mtl tracking flush-spool %s`", self.spool_path, self.spool_path.parent)

    # ------------------------------------------------------------ background thread

    def stats(self) -> dict[str, float]:
        """Counters worth watching: metrics delivered / spooled so far, background CPU seconds, queue depth."""
        return {"delivered_metrics": self.delivered_metrics, "spooled_metrics": self.spooled_metrics,
                "worker_cpu_s": self.worker_cpu_s, "queued_items": self._queue.qsize()}

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            self._loop()
        finally:
            self.worker_cpu_s = time.thread_time() - cpu0

    def _loop(self) -> None:
        cfg = self.config
        cpu0 = time.thread_time()
        next_flush = time.monotonic() + cfg.flush_interval_s
        next_sample = time.monotonic()
        backlog = 10 * cfg.max_metrics_per_batch  # send early when this many metrics wait
        while True:
            if self._controls:  # flush/close met while draining the queue: handle them in order
                item = self._controls.pop(0)
            else:
                try:
                    item = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
                except queue.Empty:
                    item = None
            try:
                if item is not None:
                    kind = item[0]
                    if kind == "close":
                        self._finish(item[2])
                        item[1].set()
                        for control in self._controls:  # a flush() racing close(): nothing left to wait for
                            control[1].set()
                        return
                    if kind == "flush":
                        self._drain_queue()
                        self._deliver(force=True)
                        item[1].set()
                        continue
                    self._absorb(item)
                now = time.monotonic()
                if self._sampler is not None and now >= next_sample:
                    self._absorb(("m", self._last_step, int(time.time() * 1000), self._sampler.sample()))
                    next_sample = now + cfg.system_metrics_interval_s
                if now >= next_flush or len(self._metrics) >= backlog:
                    self._deliver()
                    next_flush = time.monotonic() + cfg.flush_interval_s
                    self.worker_cpu_s = time.thread_time() - cpu0
            except Exception:  # noqa: BLE001 - the tracker must never die silently mid-run
                log.exception("tracking thread error (continuing)")

    def _drain_queue(self) -> None:
        """Absorb everything already queued; flush/close items found are kept for the loop, in order."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item[0] in ("flush", "close"):
                self._controls.append(item)
            else:
                self._absorb(item)

    def _absorb(self, item: tuple) -> None:
        kind = item[0]
        if kind == "m":
            _, step, ts, metrics = item
            self._last_step = max(self._last_step, step)
            for key, value in metrics.items():
                if self._valid_name(key) and (key, step) not in self.already_logged:
                    self._metrics.append((key, float(value.item() if hasattr(value, "item") else value), ts, step))
        elif kind == "v":
            _, step, ts, prefix, names, values, skip_non_finite = item
            self._last_step = max(self._last_step, step)
            if hasattr(values, "detach"):
                values = values.detach().double().cpu().tolist()
            else:
                values = [float(v) for v in values]
            if len(values) != len(names):
                log.error("log_vector(%r): %d names for %d values; dropped", prefix, len(names), len(values))
                return
            self._metrics.extend((k, v, ts, step) for k, v in zip(self._vector_keys(prefix, names), values)
                                 if k is not None and not (skip_non_finite and not math.isfinite(v))
                                 and (k, step) not in self.already_logged)
            if self.config.plots and prefix in PLOTTED_PREFIXES:
                hist = self._histories.get(prefix)
                if hist is None or hist.names != list(names):
                    hist = self._histories[prefix] = self._history_before_resume(prefix, names)
                hist.add(step, values)
        elif kind == "p":
            for k, v in item[1].items():
                self._params[str(k)] = str(v)[:MAX_PARAM_VALUE_CHARS]
        elif kind == "t":
            self._tags.update({str(k): str(v)[:MAX_PARAM_VALUE_CHARS] for k, v in item[1].items()})
        elif kind == "a":
            self._artifacts.append((item[1], item[2]))

    def _history_before_resume(self, prefix: str, names: Sequence[str]) -> _VectorHistory:
        """A new plot history; for a continued run, seeded with the store's values up to the resume step (steps
        logged after it by the interrupted process are left out: this process logs them again)."""
        hist = _VectorHistory(names)
        if self.resumed_at_step is None:
            return hist
        try:
            by_step: dict[int, dict[str, float]] = {}
            for name in names:
                for m in self.client.get_metric_history(self.run_id, f"{prefix}/{name}"):
                    if m.step <= self.resumed_at_step:
                        by_step.setdefault(m.step, {})[name] = m.value
        except Exception as exc:  # noqa: BLE001 - the plot then starts at the resume step, nothing else is lost
            log.warning("could not read %s history of run %s for its plot (%s); the plot starts at step %d",
                        prefix, self.run_id, exc, self.resumed_at_step)
            return _VectorHistory(names)
        for step in sorted(by_step):
            row = by_step[step]
            hist.add(step, [row.get(n, float("nan")) for n in names])
        return hist

    def _valid_name(self, key: str) -> bool:
        """MLflow's own name check, once per name: one bad name must not get a whole batch rejected."""
        ok = self._name_ok.get(key)
        if ok is None:
            ok = metric_name_ok(key)
            if not ok:
                log.error("metric name %r is not valid in MLflow (letters, digits, _ - . space : / only); dropped", key)
            self._name_ok[key] = ok
        return ok

    def _vector_keys(self, prefix: str, names: Sequence[str]) -> list[str | None]:
        cache_key = (prefix, tuple(names))
        keys = self._key_cache.get(cache_key)
        if keys is None:
            keys = [k if self._valid_name(k) else None for k in (f"{prefix}/{n}" for n in names)]
            self._key_cache[cache_key] = keys
        return keys

    def _records(self) -> list[dict[str, Any]]:
        """Turn everything pending into spool-format records (each one log_batch or artifact call)."""
        base = {"tracking_uri": self.tracking_uri, "run_id": self.run_id}
        records = []
        params = list(self._params.items())
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            records.append(dict(base, params=dict(params[i:i + MAX_PARAMS_PER_BATCH])))
        tags = list(self._tags.items())
        for i in range(0, len(tags), MAX_PARAMS_PER_BATCH):
            records.append(dict(base, tags=dict(tags[i:i + MAX_PARAMS_PER_BATCH])))
        n = self.config.max_metrics_per_batch
        for i in range(0, len(self._metrics), n):
            records.append(dict(base, metrics=[list(m) for m in self._metrics[i:i + n]]))
        records.extend(dict(base, artifact=p, artifact_path=ap) for p, ap in self._artifacts)
        self._params, self._tags, self._metrics, self._artifacts = {}, {}, [], []
        return records

    def _send(self, record: dict[str, Any]) -> None:
        spool.deliver_record(self.client, record)

    def _store_failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._retry_at:
            log.warning("tracking store %s unreachable (%s: %s); spooling to %s, retry in %.1fs",
                        self.tracking_uri, type(exc).__name__, str(exc)[:200], self.spool_path, self._backoff)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.retry_max_s)

    def _deliver(self, force: bool = False) -> bool:
        """Send pending records; on failure spool them. Returns True if the store took everything."""
        records = self._records()
        if not force and time.monotonic() < self._retry_at:
            self._spool(records)
            return False
        if self.spool_path.exists():  # older records go first
            try:
                if not spool.drain(self.spool_path, self._send):
                    raise ConnectionError("spool upload interrupted")
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)
                self._spool(records)
                return False
            log.info("tracking store reachable again: spool %s uploaded", self.spool_path)
        for i, record in enumerate(records):
            try:
                self._send(record)
                self.delivered_metrics += len(record.get("metrics", ()))
            except Exception as exc:  # noqa: BLE001
                if spool.is_permanent(exc):
                    log.error("tracking store rejected a batch for good (%s); kept in %s.rejected", exc,
                              self.spool_path.name)
                    spool.append(self.spool_path.with_name(self.spool_path.name + ".rejected"),
                                 [dict(record, error=str(exc)[:500])])
                    continue
                self._store_failed(exc)
                self._spool(records[i:])
                return False
        self._backoff = self.config.retry_initial_s
        self._retry_at = 0.0
        return True

    def _spool(self, records: list[dict[str, Any]]) -> None:
        if records:
            spool.append(self.spool_path, records)
            self.spooled_metrics += sum(len(r.get("metrics", ())) for r in records)

    def _finish(self, status: str) -> None:
        self._drain_queue()
        if self._sampler is not None:
            self._absorb(("m", self._last_step, int(time.time() * 1000), self._sampler.sample()))
        self._render_plots()
        deadline = time.monotonic() + self.config.close_timeout_s
        ok = self._deliver(force=True)
        while not ok and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
            ok = self._deliver(force=True)
        end = {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "terminate": status}
        if ok:
            try:
                self._send(end)
                return
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)
        self._spool([end])

    def _render_plots(self) -> None:
        if not self._histories:
            return
        try:
            from recsys_mtl.tracking import plots

            out_dir = self.work_dir / "tracking" / "plots"
            for prefix, hist in self._histories.items():
                if not hist.steps:
                    continue
                name = prefix.replace("/", "_")
                path = plots.plot_task_heatmap(
                    hist.rows, hist.steps, hist.names, out_dir / f"{name}.png",
                    title=f"{prefix} per task over steps", discrete=prefix == "train/group",
                    colorbar_label=prefix.rsplit("/", 1)[-1], log_scale=prefix == "train/weight",
                    task_types=[self._task_types.get(n, "binary") for n in hist.names] if self._task_types else None)
                self._artifacts.append((str(path), "plots"))
        except Exception:  # noqa: BLE001 - a plot must never lose the metrics
            log.exception("could not render tracking plots")


def start_run(config: TrackingConfig | None = None, **kwargs) -> RunTracker | NullTracker:
    """Same as RunTracker.start."""
    return RunTracker.start(config, **kwargs)
