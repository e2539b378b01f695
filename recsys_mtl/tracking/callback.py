"""TrackingCallback: a Trainer's run in MLflow (rank 0), through RunTracker.

    callback = TrackingCallback()
    Trainer(config, callbacks=[callback]).fit()      # config.tracking says where and what
    callback.run_id, callback.model_version

What a run holds:
- params: the flattened training config; artifacts `config.yaml`, `feature_spec.yaml`;
  tags: git commit, data fingerprint (train + eval paths), package versions, world size;
- every `train_metrics_every_n_steps` steps: `train/loss/<task>`, `train/weight/<task>`,
  the weighting's per-task state (`train/group/<task>` and `train/gamma/<task>` for
  GO4Align), `train/loss_total`, `train/weighting/<summary>`, and the streaming TorchRec
  metrics `train/{ne,logloss,calibration,auc}/<task>` (window) and
  `train/{ne,logloss,calibration}_lifetime/<task>`;
- each evaluation: `eval/{ne,auc,logloss,calibration,count}/<task>` of binary tasks,
  `eval/{nmse,mse,rmse,mae,mae_raw,count}/<task>` of regression tasks, `eval/mean_ne`, `eval/mean_auc` (binary
  tasks), `eval/mean_nmse` (regression tasks);
- system metrics (`system/...`), heatmaps `plots/train_weight.png`, `plots/train_group.png`;
- a training resumed from a checkpoint continues the same run (`tracking.continue_run`): its first params stay,
  changed ones are listed in a tag, the resume steps are in `recsys_mtl.resumed_at_steps`; each step's metrics
  are in the run once, even after a kill -9: everything up to a checkpoint is delivered (or spooled, fsynced)
  before the checkpoint commits, and a resumed process does not log again a (metric, step) the store already
  holds from the interrupted one (that one's value stays; system metrics are sampled by time and excluded);
- at the end: the model as `model/` (config.yaml, feature_spec.yaml, the final DCP
  checkpoint directory `model/checkpoint/`, as saved by every rank, and `manifest.json`, the SHA-256 of each of
  those files, whose own hash is the tag `recsys_mtl.model_manifest_sha256`), `train_log.jsonl`,
  and a model-registry version when `tracking.register_model` is set.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recsys_mtl.metrics.names import AUC, BINARY_METRICS, COUNT, NE, NMSE, REGRESSION_METRICS
from recsys_mtl.train.callbacks import TrainerCallback
from recsys_mtl.tracking.tracker import NullTracker, RunTracker

if TYPE_CHECKING:
    from recsys_mtl.train.callbacks import TrainResult
    from recsys_mtl.train.trainer import Trainer

log = logging.getLogger(__name__)

EVAL_METRICS = (*BINARY_METRICS, *REGRESSION_METRICS, COUNT)


class TrackingCallback(TrainerCallback):
    def __init__(self) -> None:
        self.tracker: RunTracker | NullTracker = NullTracker()
        self.run_id: str | None = None
        self.model_version: Any = None  # mlflow ModelVersion when registered

    # -- start -------------------------------------------------------------------------------
    def on_train_start(self, trainer: "Trainer") -> None:
        from recsys_mtl.config.loader import to_yaml
        from recsys_mtl.tracking.tracker import check_task_names

        check_task_names(trainer.spec.task_names, trainer.spec.name)  # before a run exists (library callers too)

        cfg, tcfg = trainer.config, trainer.config.tracking
        work = trainer.output_dir / "tracking"
        work.mkdir(parents=True, exist_ok=True)
        spec_file = work / "feature_spec.yaml"  # the spec the model was built from, even if given in memory
        spec_file.write_text(to_yaml(trainer.spec))
        data_paths = [p for p in (cfg.data.train_path, cfg.data.eval_path) if p and Path(p).exists()]
        continue_run_id = None
        if trainer.resumed_from_step is not None and tcfg.continue_run and (work / "run_id").exists():
            continue_run_id = (work / "run_id").read_text().strip() or None
        self.tracker = RunTracker.start(
            tcfg, run_name=tcfg.run_name or trainer.output_dir.resolve().name, config_obj=cfg,
            params={"world_size": trainer.env.world_size, "num_tasks": trainer.spec.num_tasks},
            tags={"recsys_mtl.weighting": cfg.weighting.method, "recsys_mtl.architecture": cfg.model.architecture},
            artifacts=[spec_file], data_paths=data_paths, work_dir=trainer.output_dir, rank=trainer.env.rank,
            continue_run_id=continue_run_id, resumed_at_step=trainer.resumed_from_step)
        self.run_id = self.tracker.run_id
        if trainer.spec.has_regression:
            self.tracker.set_task_types(dict(zip(trainer.spec.task_names, trainer.spec.task_types)))
        if self.run_id:
            (work / "run_id").write_text(self.run_id + "\n")

    # -- per step ----------------------------------------------------------------------------
    def on_log(self, trainer: "Trainer", records: list[dict[str, Any]]) -> None:
        t, names = self.tracker, trainer.spec.task_names
        due = [r for r in records if t.due(r["step"])]
        for r in due:
            t.log_vector(r["step"], "train/loss", names, r["losses"])
            t.log_vector(r["step"], "train/weight", names, r["weights"])
            t.log_metrics(r["step"], {"train/loss_total": r["loss"], "train/epoch": r["epoch"]})
        if due:  # method state exists for the latest step only: log it there
            step = records[-1]["step"]
            for key, value in trainer.weighting.tracking_state().items():
                if value.shape == (len(names),):
                    t.log_vector(step, f"train/{key}", names, value.detach().clone())
            summary = {f"train/weighting/{k}": float(v) for k, v in trainer.weighting.summary().items()}
            t.log_metrics(step, {k: v for k, v in summary.items() if math.isfinite(v)})

    def on_train_metrics(self, trainer: "Trainer", step: int, metrics: dict[str, torch.Tensor]) -> None:
        for name, values in metrics.items():  # NaN: undefined (one class in the window), left out as eval's are
            self.tracker.log_vector(step, f"train/{name}", trainer.spec.task_names, values, skip_non_finite=True)

    def on_eval(self, trainer: "Trainer", step: int, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        out: dict[str, float] = {}
        for task, m in metrics.items():
            for key in EVAL_METRICS:
                if key in m and math.isfinite(m[key]):
                    out[f"eval/{key}/{task}"] = float(m[key])
        for key in (NE, AUC, NMSE):  # each over the tasks that have it (nmse: regression tasks)
            vals = [m[key] for m in metrics.values() if key in m and math.isfinite(m[key])]
            if vals:
                out[f"eval/mean_{key}"] = sum(vals) / len(vals)
        self.tracker.log_metrics(step, out)

    def on_checkpoint(self, trainer: "Trainer", step: int) -> None:
        """Every metric up to `step` is delivered or in the fsynced spool before the checkpoint commits: a kill -9
        after it loses none of them (a resume starts after `step` and does not log them again)."""
        timeout = 2 * trainer.config.tracking.http_timeout_s + 10  # one delivery attempt, then the spool write
        spool = self.tracker.spool_path
        if not self.tracker.flush(timeout=timeout) and not (spool is not None and spool.exists()):
            log.warning("tracking: the metrics up to step %d were not all delivered before its checkpoint (the "
                        "store is slow); a kill now may lose some of them", step)

    # -- end ---------------------------------------------------------------------------------
    def on_train_end(self, trainer: "Trainer", result: "TrainResult") -> None:
        t, tcfg = self.tracker, trainer.config.tracking
        try:
            if result.trained_steps:  # a re-run of a finished training trained nothing
                t.log_metrics(result.steps, {"train/samples_per_second": result.samples_per_second})
            log_path = trainer.output_dir / "train_log.jsonl"
            if log_path.exists():
                t.log_artifact(log_path)
            if tcfg.log_model and self.run_id and self._log_model(trainer) and tcfg.register_model:
                self._register(tcfg.register_model, retrained=result.trained_steps > 0)
        finally:
            self.close("FINISHED")

    def _log_model(self, trainer: "Trainer") -> bool:
        """Log the checkpoint of the end of this training as the model; False (and a warning) if there is none."""
        from recsys_mtl.evaluate.loading import MODEL_ARTIFACT
        from recsys_mtl.train.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, SPEC_FILE, step_number

        checkpoint = trainer.checkpoints.latest()
        if checkpoint is None or step_number(checkpoint) != trainer.step or \
                trainer.checkpoints.is_earlier_runs(checkpoint):
            log.warning("no model logged (nor registered): the end of training, step %d, was not checkpointed "
                        "(train.checkpoint.at_end: false)", trainer.step)
            return False
        # the checkpoint's own config and spec (those of the process that saved it: a re-run under other settings
        # that trains nothing logs the model as it was trained); a checkpoint older than them: this run's
        from recsys_mtl.tracking.model_manifest import MANIFEST_FILE, MANIFEST_TAG, write_manifest

        work = trainer.output_dir / "tracking"
        t = self.tracker
        files = {name: checkpoint / name if (checkpoint / CONFIG_FILE).is_file() else work / name
                 for name in (CONFIG_FILE, SPEC_FILE)}
        for src in files.values():
            t.log_artifact(src, MODEL_ARTIFACT)
        t.log_artifact(checkpoint, f"{MODEL_ARTIFACT}/{CHECKPOINT_DIR}/{checkpoint.name}")  # the name keeps the step
        from recsys_mtl.evaluate.pyfunc import MLMODEL, write_mlmodel

        # the model folder is also an MLflow pyfunc model (mlflow.pyfunc.load_model, mlflow models serve)
        files[MLMODEL] = write_mlmodel(work / "pyfunc", trainer.spec, run_id=self.run_id)
        t.log_artifact(files[MLMODEL], MODEL_ARTIFACT)
        files.update({f"{CHECKPOINT_DIR}/{checkpoint.name}/{f.relative_to(checkpoint).as_posix()}": f
                      for f in checkpoint.rglob("*") if f.is_file()})
        manifest_sha = write_manifest(files, work / MANIFEST_FILE)  # what a load from the store is checked against
        t.log_artifact(work / MANIFEST_FILE, MODEL_ARTIFACT)
        t.set_tags({"recsys_mtl.model": MODEL_ARTIFACT, "recsys_mtl.checkpoint": checkpoint.name,
                    MANIFEST_TAG: manifest_sha})
        return True

    def _register(self, name: str, retrained: bool = True) -> None:
        from recsys_mtl.tracking.registry import register_run_model, run_model_versions

        if not self.tracker.flush(timeout=600):  # the version's source must exist first
            log.error("model not registered: the run's artifacts are not all in the store yet (see the spool)")
            return
        if not retrained:  # a re-run of a finished training: its model is the one already registered, if any
            existing = run_model_versions(self.tracker.client, name, self.run_id)
            if existing:
                self.model_version = existing[-1]
                log.info("model %r version %s is this run's model already: not registered again", name,
                         self.model_version.version)
                return
        self.model_version = register_run_model(self.tracker.client, name, self.run_id)
        log.info("registered model %r version %s (source %s)", name, self.model_version.version,
                 self.model_version.source)

    def on_train_error(self, trainer: "Trainer", exc: BaseException) -> None:
        """Ctrl-C or SIGTERM ends the run KILLED, an error FAILED; either way its queued metrics are sent first."""
        self.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def close(self, status: str = "FINISHED") -> None:
        """End the run (also called with "FAILED" when training raises); idempotent."""
        self.tracker.close(status)


__all__ = ["TrackingCallback"]
