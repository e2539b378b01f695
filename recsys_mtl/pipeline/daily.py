"""The daily incremental pipeline.

For each date partition D (in order), with N the next date:
  train     warm-start from the current champion's checkpoint, train on D (tracked run)
  evaluate  score the candidate and that champion on N, the same rows, in one streaming pass
            (memory independent of the day's size); per-task NE, relative NE change with
            Poisson-bootstrap CIs (candidate vs champion)
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
from recsys_mtl.evaluate import SCORING_BATCH_SIZE
from recsys_mtl.pipeline.config import DailyPipelineConfig
from recsys_mtl.pipeline.gate import decide
from recsys_mtl.pipeline.registry import ChampionRegistry
from recsys_mtl.pipeline.state import STEPS, StepStore
from recsys_mtl.train.lock import OutputDirLock

log = logging.getLogger(__name__)
DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
#: the pipeline config's path settings, relative to the config file
PATH_KEYS = (("data",), ("train_config",), ("work_dir",), ("spec",))


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
        """The pipeline of the config file `path`; its paths (data, train_config, work_dir, spec) are relative to
        the file. A missing train_config or spec is one error naming the key."""
        config = load_yaml(path, DailyPipelineConfig, PATH_KEYS)
        problems = [f"{key}: {value}: no such file" for key, value in (("train_config", config.train_config),
                                                                       ("spec", config.spec))
                    if value is not None and "://" not in value and not Path(value).is_file()]
        if problems:
            raise ConfigError(f"{path}: " + "; ".join(problems))
        return cls(config, **kwargs)

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
            mean_rel_ne_change=ev["mean_rel_ne_change"],
            decision="accepted" if dec["accepted"] and not pro.get("refused") else "rejected",
            reason=pro.get("refused") or dec["reason"], version=pro.get("version"), ran_steps=ran,
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
        with OutputDirLock(out):  # no live attempt can own a RUNNING run of this date while we hold its folder
            _end_orphan_runs(self.tracking_uri, self.config.tracking.experiment, f"{self.config.name}-{date}")
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

        from recsys_mtl.tracking.model_manifest import verify_run_model

        client = MlflowClient(self.tracking_uri)
        run = client.get_run(run_id)
        local = local_artifact_dir(run.info.artifact_uri)
        if local is None or not (local / MODEL_ARTIFACT).is_dir():
            import mlflow.artifacts

            model_dir = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT,
                                                                 dst_path=str(self.work / "models" / run_id),
                                                                 tracking_uri=self.tracking_uri))
        else:
            model_dir = local / MODEL_ARTIFACT
        verify_run_model(client, run_id, model_dir, f"run {run_id}'s model")
        return model_dir

    def _statistics(self, model_dirs: list[str], data: Path):
        """Streaming per-task statistics of the candidate (and the champion, on the same rows, with the bootstrap):
        memory does not grow with the day's rows. Also the tasks, their kinds, and the candidate's count of NaN or
        infinite logits (a sigmoid hides an infinity)."""
        from recsys_mtl.evaluate.loading import load_model
        from recsys_mtl.evaluate.scoring import score_statistics

        loaded = [load_model(d) for d in model_dirs]
        kinds = [{"task_types": m.spec.task_types, "label_transforms": [t.transform for t in m.spec.tasks]}
                 for m in loaded]
        if len(loaded) == 2 and (loaded[1].spec.task_names != loaded[0].spec.task_names or kinds[1] != kinds[0]):
            raise RuntimeError(f"the champion {model_dirs[1]} scores other tasks or task types than the candidate")
        non_finite = _NonFiniteCount()
        models = [non_finite.wrap(loaded[0].model)] + [m.model for m in loaded[1:]]
        stats = score_statistics(models, [m.spec for m in loaded], data, batch_size=SCORING_BATCH_SIZE,
                                 n_boot=self.config.gate.bootstrap_samples, seed=0)
        return stats, loaded[0].spec.task_names, kinds[0], non_finite.count

    def _step_evaluate(self, date: str) -> dict[str, Any]:
        from recsys_mtl.metrics.names import normalized_error_name
        from recsys_mtl.tracking.model_manifest import verify_run_model

        train = self.store.get(date, "train")
        eval_date = train["eval_date"]
        data = self.partitions[eval_date]
        verify_run_model(self._registry().client, train["run_id"], train["model_dir"], f"{date}'s candidate")
        dirs = [train["model_dir"]]
        champion = None
        if train["champion_version"] is not None:
            champion = self._registry().version(train["champion_version"])
            dirs.append(champion.checkpoint)
        stats, tasks, kinds, non_finite = self._statistics(dirs, data)
        # "ne" in the record: each task's normalized error (NE of binary tasks, NMSE of regression tasks)
        cand_ne = stats.normalized_error(0)
        record: dict[str, Any] = {
            "eval_date": eval_date, "tasks": tasks, "candidate_ne": _floats(cand_ne),
            "candidate_non_finite": non_finite,  # NaN/inf logits: a diverged model, never promoted
            "candidate_mean_ne": float(np.nanmean(cand_ne)), "champion_ne": None, "champion_mean_ne": None,
            "rel_ne_change": None, "mean_rel_ne_change": None, "mean_rel_ne_change_ci": None,
            "task_types": kinds["task_types"],
        }
        metrics = {f"eval/{normalized_error_name(k)}/{t}": float(v)
                   for t, k, v in zip(tasks, kinds["task_types"], cand_ne) if np.isfinite(v)}
        if champion is not None:
            cmp = stats.comparison()
            champ_ne = stats.normalized_error(1)
            record.update(champion_ne=_floats(champ_ne), champion_mean_ne=float(np.nanmean(champ_ne)),
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
        refused = _promote_refusal(registry, train)
        if refused:  # e.g. killed after decide, and a later date promoted meanwhile: the gate's verdict is stale
            own = registry.version_of_run(train["run_id"])
            if own is not None:  # registered before the kill: say in the registry that it never became champion
                registry.tag_version(own, {PROMOTE_REFUSED_TAG: refused})
            _tag_run(self.tracking_uri, train["run_id"], {"recsys_mtl.pipeline.decision": "rejected",
                                                          "recsys_mtl.pipeline.reason": refused})
            log.warning("%s: %s", date, refused)
            return {"version": None, "refused": refused}
        version = registry.register(train["run_id"], source=train["model_dir"], checkpoint=train["model_dir"], date=date)
        registry.promote(version)
        return {"version": version}


class _NonFiniteCount:
    """Counts a model's NaN or infinite logits as it scores (a sigmoid would hide an infinity)."""

    def __init__(self) -> None:
        self._count = None

    def wrap(self, model):
        import torch

        def scored(dense, sparse):
            logits = model(dense, sparse)
            found = (~torch.isfinite(logits)).sum()
            self._count = found if self._count is None else self._count + found
            return logits

        return scored

    @property
    def count(self) -> int:
        return 0 if self._count is None else int(self._count)


PROMOTE_REFUSED_TAG = "recsys_mtl.pipeline.promote_refused"


def _promote_refusal(registry: ChampionRegistry, train: dict[str, Any]) -> str | None:
    """Why the candidate of `train` may not become champion now, or None.

    Its gate compared it with the champion its train record pinned; the alias must still name that version, or
    this candidate's own (a promote that died after moving the alias and before its record)."""
    pinned, now = train["champion_version"], registry.champion_version()
    if now == pinned or (now is not None and now == registry.version_of_run(train["run_id"])):
        return None
    return (f"promote refused: this candidate was compared with champion version {pinned or '(none)'}, and the "
            f"champion is now version {now or '(none)'}")


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


def _end_orphan_runs(tracking_uri: str, experiment: str, run_name: str) -> list[str]:
    """Mark KILLED the runs named `run_name` still RUNNING: a kill -9 of an earlier attempt left them so (a run the
    retry continues from its checkpoint is set RUNNING again by the tracker). Returns their ids."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    ended = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000):
        if run.info.run_name == run_name:
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("marked %d run(s) of an earlier, killed attempt KILLED: %s", len(ended), ", ".join(ended))
    return ended


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
