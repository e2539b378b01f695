"""The daily incremental pipeline.

For each date partition D (in order), with N the next date:
  train     warm-start from the current champion's checkpoint, train on D (tracked run)
  evaluate  score the candidate and that champion on N, the same rows; exact per-task NE,
            relative NE change with bootstrap CIs (candidate vs champion)
  decide    the gate: better on average, guarded tasks not worse beyond tolerance
  promote   accepted: register the candidate in the MLflow model registry and move the
            alias to it; rejected: nothing (the run records why)

Each step leaves a record under work_dir/state/D/ only when it succeeds, so a
re-run skips completed steps and dates, and a failure anywhere before
`promote` leaves the registry untouched. The champion a date compares against
is fixed in its `train` record, so a resumed date compares against the same
version even if the run was interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_mtl.config.loader import ConfigError, load_yaml
from recsys_mtl.data.folder import spec_file
from recsys_mtl.pipeline.config import DailyPipelineConfig
from recsys_mtl.pipeline.gate import decide
from recsys_mtl.pipeline.registry import ChampionRegistry
from recsys_mtl.pipeline.state import STEPS, StepStore

log = logging.getLogger(__name__)
DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclasses.dataclass
class DateOutcome:
    date: str
    eval_date: str
    candidate_ne: float
    champion_ne: float | None
    mean_rel_ne_change: float | None
    decision: str
    reason: str
    version: str | None
    ran_steps: list[str]


class DailyPipeline:
    def __init__(self, config: DailyPipelineConfig, *, echo=print) -> None:
        self.config = config
        self.echo = echo
        self.work = Path(config.work_dir)
        self.store = StepStore(self.work / "state")
        self.partitions = self._discover()
        spec = config.spec or str(spec_file(config.data[0]))
        self.spec_path = spec
        self.tracking_uri = config.tracking.resolved_uri()
        self._check_guarded_tasks()

    def _check_guarded_tasks(self) -> None:
        """Before any training: a misspelt guarded task would otherwise stop the pipeline after day 2's training."""
        from recsys_mtl.config.features import FeatureSpec

        tasks = FeatureSpec.load(self.spec_path).task_names
        unknown = [t for t in self.config.gate.guarded_tasks if t not in tasks]
        if unknown:
            raise ConfigError(f"gate.guarded_tasks: unknown task(s) {', '.join(unknown)}; the feature spec "
                              f"{self.spec_path} has: {', '.join(tasks)}")

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> "DailyPipeline":
        return cls(load_yaml(path, DailyPipelineConfig), **kwargs)

    # -- dates -------------------------------------------------------------------------------
    def _discover(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for root in map(Path, self.config.data):
            if not root.is_dir():
                raise FileNotFoundError(f"{root}: pipeline data root not found (data: in the pipeline config)")
            for child in sorted(root.iterdir()):
                m = DATE_DIR.match(child.name)
                if m:
                    if m.group(1) in found:
                        raise ConfigError(f"date {m.group(1)} is in two data roots: {found[m.group(1)]} and {child}")
                    found[m.group(1)] = child
        if len(found) < 2:
            raise ConfigError(f"{', '.join(self.config.data)}: need at least two date=YYYY-MM-DD partitions, found {len(found)}")
        return dict(sorted(found.items()))

    def dates_between(self, start: str | None, end: str | None) -> list[str]:
        dates = list(self.partitions)
        start = start or dates[0]
        end = end or dates[-2]
        for d, flag in ((start, "--from"), (end, "--to")):
            if d not in self.partitions:
                raise ConfigError(f"{flag} {d}: no partition date={d}; dates: {dates[0]} .. {dates[-1]}")
        if end == dates[-1]:
            raise ConfigError(f"--to {end}: the last date has no next day to evaluate on; the last trainable date is {dates[-2]}")
        if start > end:
            raise ConfigError(f"--from {start} is after --to {end}")
        return [d for d in dates if start <= d <= end]

    def next_date(self, date: str) -> str:
        dates = list(self.partitions)
        return dates[dates.index(date) + 1]

    # -- running -----------------------------------------------------------------------------
    def run(self, start: str | None = None, end: str | None = None) -> list[DateOutcome]:
        dates = self.dates_between(start, end)
        outcomes = []
        for i, date in enumerate(dates):
            prefix = f"[{i + 1}/{len(dates)}] {date}"
            if self.store.completed(date):
                outcome = self._outcome(date, ran=[])
                self.echo(f"{prefix}: already completed ({outcome.decision}), nothing to do")
            else:
                ran = []
                for step in STEPS:
                    if self.store.get(date, step) is None:
                        t0 = time.perf_counter()
                        self.echo(f"{prefix}: {step} ...")
                        self.store.put(date, step, getattr(self, f"_step_{step}")(date))
                        self.echo(f"{prefix}: {step} done in {time.perf_counter() - t0:.1f} s")
                        ran.append(step)
                outcome = self._outcome(date, ran=ran)
                self.echo(f"{prefix}: {outcome.decision} ({outcome.reason})")
            outcomes.append(outcome)
        return outcomes

    def _outcome(self, date: str, ran: list[str]) -> DateOutcome:
        ev, dec, pro = (self.store.get(date, s) for s in ("evaluate", "decide", "promote"))
        return DateOutcome(
            date=date, eval_date=ev["eval_date"], candidate_ne=ev["candidate_mean_ne"], champion_ne=ev["champion_mean_ne"],
            mean_rel_ne_change=ev["mean_rel_ne_change"], decision="accepted" if dec["accepted"] else "rejected",
            reason=dec["reason"], version=pro.get("version"), ran_steps=ran,
        )

    # -- steps -------------------------------------------------------------------------------
    def _registry(self) -> ChampionRegistry:
        return ChampionRegistry(self.tracking_uri, self.config.registry.model_name, self.config.registry.alias)

    def _step_train(self, date: str) -> dict[str, Any]:
        from recsys_mtl.config.train import TrainConfig
        from recsys_mtl.tracking.callback import TrackingCallback
        from recsys_mtl.train.trainer import Trainer

        champion = self._registry().champion()
        eval_date = self.next_date(date)
        out = self.work / "runs" / date
        q = _yaml_string  # values are read as YAML: a quoted string stays one ('#', ': ', '2026' or 'on' in it)
        overrides = list(self.config.train_overrides) + [
            f"data.train_path={q(self.partitions[date])}",
            f"data.eval_path={q(self.partitions[eval_date])}",
            f"data.spec={q(self.spec_path)}",
            f"train.output_dir={q(out)}",
            "train.checkpoint.resume=true",  # a re-run of a failed train step continues it
            "train.checkpoint.at_end=true",  # the logged model, which the gate scores, is the end of training
            f"train.init_from={q(champion.checkpoint) if champion else 'null'}",
            f"tracking.tracking_uri={q(self.tracking_uri)}",
            f"tracking.experiment={q(self.config.tracking.experiment)}",
            f"tracking.run_name={q(f'{self.config.name}-{date}')}",
            "tracking.log_model=true",
        ]
        artifacts = self.config.tracking.resolved_artifact_location()
        if artifacts:
            overrides.append(f"tracking.artifact_location={q(artifacts)}")
        config = TrainConfig.load(self.config.train_config, overrides)
        callback = TrackingCallback()
        trainer = Trainer(config, callbacks=[callback])
        trainer.fit()
        if not callback.run_id:
            raise RuntimeError(f"{date}: training did not create an MLflow run (is tracking enabled?)")
        model_dir = self._model_dir(callback.run_id)
        return {"run_id": callback.run_id, "model_dir": str(model_dir), "eval_date": eval_date,
                "champion_version": champion.version if champion else None,
                "champion_run_id": champion.run_id if champion else None}

    def _model_dir(self, run_id: str) -> Path:
        from mlflow.tracking import MlflowClient

        from recsys_mtl.evaluate.loading import MODEL_ARTIFACT, local_artifact_dir

        run = MlflowClient(self.tracking_uri).get_run(run_id)
        local = local_artifact_dir(run.info.artifact_uri)
        if local is None or not (local / MODEL_ARTIFACT).is_dir():
            import mlflow.artifacts

            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT,
                                                            dst_path=str(self.work / "models" / run_id),
                                                            tracking_uri=self.tracking_uri))
        return local / MODEL_ARTIFACT

    def _scores(self, model_dir: str, data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], int, dict]:
        """Predictions (probabilities; regression tasks: values), labels, mask, task names, how many logits are
        NaN or infinite (a sigmoid hides an infinity), and the tasks' types and label transforms."""
        import torch

        from recsys_mtl.evaluate.loading import load_model
        from recsys_mtl.evaluate.scoring import score_eval_set
        from recsys_mtl.losses import task_predictions

        loaded = load_model(model_dir)
        with torch.no_grad():
            logits, labels, mask = score_eval_set(loaded.model, loaded.spec, data, batch_size=8192)
        non_finite = int((~torch.isfinite(logits)).sum())
        regression = torch.tensor([t.is_regression for t in loaded.spec.tasks])
        kinds = {"task_types": loaded.spec.task_types, "label_transforms": [t.transform for t in loaded.spec.tasks]}
        return (task_predictions(logits, regression).numpy(), labels.numpy(), mask.numpy(), loaded.spec.task_names,
                non_finite, kinds)

    def _step_evaluate(self, date: str) -> dict[str, Any]:
        from recsys_mtl.metrics.names import normalized_error_name
        from recsys_mtl.metrics.offline import compare_models, task_metrics
        from recsys_mtl.tracking.tracker import RunTracker

        train = self.store.get(date, "train")
        eval_date = train["eval_date"]
        data = self.partitions[eval_date]
        cand, labels, mask, tasks, non_finite, kinds = self._scores(train["model_dir"], data)
        exact = task_metrics(cand, labels, mask, **kinds)
        # "ne" in the record: each task's normalized error (NE of binary tasks, NMSE of regression tasks)
        record: dict[str, Any] = {
            "eval_date": eval_date, "tasks": tasks, "candidate_ne": _floats(exact.normalized_error),
            "candidate_non_finite": non_finite,  # NaN/inf logits: a diverged model, never promoted
            "candidate_mean_ne": float(np.nanmean(exact.normalized_error)), "champion_ne": None,
            "champion_mean_ne": None, "rel_ne_change": None, "mean_rel_ne_change": None, "mean_rel_ne_change_ci": None,
            "task_types": kinds["task_types"],
        }
        metrics = {f"eval/{normalized_error_name(k)}/{t}": float(v)
                   for t, k, v in zip(tasks, kinds["task_types"], exact.normalized_error) if np.isfinite(v)}
        if train["champion_version"] is not None:
            champion = self._registry().version(train["champion_version"])
            champ, champ_labels, champ_mask, champ_tasks, _, champ_kinds = self._scores(champion.checkpoint, data)
            if champ_tasks != tasks or champ_kinds != kinds or not np.array_equal(champ_mask, mask):
                raise RuntimeError(f"{date}: champion version {champion.version} scores other tasks, task types or "
                                   "rows than the candidate")
            cmp = compare_models(champ, cand, labels, mask, n_boot=self.config.gate.bootstrap_samples, seed=0, **kinds)
            champ_exact = task_metrics(champ, labels, mask, **kinds)
            record.update(champion_ne=_floats(champ_exact.normalized_error),
                          champion_mean_ne=float(np.nanmean(champ_exact.normalized_error)),
                          rel_ne_change=_floats(cmp.rel_ne_change), mean_rel_ne_change=float(cmp.mean_rel_ne_change),
                          mean_rel_ne_change_ci=_floats(cmp.mean_rel_ne_change_ci))
            metrics.update({f"eval/rel_ne_change_vs_champion/{t}": float(v)
                            for t, v in zip(tasks, cmp.rel_ne_change) if np.isfinite(v)})
            metrics["eval/mean_rel_ne_change_vs_champion"] = float(cmp.mean_rel_ne_change)
        _log_to_run(self.tracking_uri, train["run_id"], metrics)
        return record

    def _step_decide(self, date: str) -> dict[str, Any]:
        ev = self.store.get(date, "evaluate")
        compared_with = self.store.get(date, "train")["champion_version"]
        now = self._registry().champion_version()
        if ev.get("candidate_non_finite"):  # absent from records written before the check
            accepted, reason = False, (f"the candidate predicts {ev['candidate_non_finite']} non-finite values "
                                       "(NaN/inf) on the eval day: its training diverged")
        elif now != compared_with:  # e.g. a retried older date, after a later date promoted a newer model
            accepted, reason = False, (f"the champion is now version {now}, not version {compared_with} that this "
                                       "candidate was trained from and compared with")
        elif ev["champion_ne"] is None:
            accepted, reason = True, "no champion yet: the first candidate becomes champion"
        else:
            d = decide(ev["tasks"], ev["rel_ne_change"], ev["mean_rel_ne_change"], self.config.gate)
            accepted, reason = d.accepted, d.reason
        _tag_run(self.tracking_uri, self.store.get(date, "train")["run_id"],
                 {"recsys_mtl.pipeline.decision": "accepted" if accepted else "rejected",
                  "recsys_mtl.pipeline.reason": reason, "recsys_mtl.pipeline.date": date})
        return {"accepted": accepted, "reason": reason}

    def _step_promote(self, date: str) -> dict[str, Any]:
        if not self.store.get(date, "decide")["accepted"]:
            return {"version": None}
        train = self.store.get(date, "train")
        registry = self._registry()
        version = registry.register(train["run_id"], source=train["model_dir"], checkpoint=train["model_dir"], date=date)
        registry.promote(version)
        return {"version": version}


def _yaml_string(value: Any) -> str:
    """`value` as a YAML double-quoted string (JSON's quoting is valid YAML)."""
    import json

    return json.dumps(str(value))


def _floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x).ravel()]


def _log_to_run(tracking_uri: str, run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def _tag_run(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def format_summary(outcomes: list[DateOutcome]) -> str:
    head = ["date", "eval on", "candidate NE", "champion NE", "mean rel NE", "decision", "version", "reason"]
    rows = []
    for o in outcomes:
        rows.append([o.date, o.eval_date, f"{o.candidate_ne:.5f}", "-" if o.champion_ne is None else f"{o.champion_ne:.5f}",
                     "-" if o.mean_rel_ne_change is None else f"{o.mean_rel_ne_change:+.3%}", o.decision,
                     o.version or "-", o.reason])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
