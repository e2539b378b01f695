"""`recsys-mtl evaluate`: exact per-task metrics of a trained model on an eval set, optionally vs a baseline.

    recsys-mtl evaluate --run RUN_ID --data data/eval [--baseline BASELINE_RUN_ID]
    recsys-mtl evaluate --run models:/NAME/VERSION --data data/eval
    recsys-mtl evaluate --checkpoint runs/x/checkpoints --data data/eval [--set k=v ...]

The model is loaded in this one process on CPU, unsharded, from its DCP checkpoint (however
many ranks saved it). Metrics (binary tasks: NE, AUC, calibration = sum(p) / sum(y), log loss; regression
tasks: NMSE = MSE / label variance, MSE, RMSE, MAE on the transformed label, MAE on the raw scale) are exact,
over labelled rows only; with a baseline, per-task deltas of the normalized error (NE, or NMSE) and AUC get
paired-bootstrap 95% CIs.

Logging: when the model comes from an MLflow run, a new *eval run* is created in that run's
experiment, nested under it (`mlflow.parentRunId`), holding `eval/<metric>/<task>` (at the
checkpoint's step), the report table, and with a baseline `eval/delta_ne/<task>`,
`eval/rel_ne_change/<task>` (regression tasks: `eval/delta_nmse/<task>`, `eval/rel_nmse_change/<task>`),
`eval/mean_rel_ne_change` (over all tasks' normalized errors) and `plots/ne_change_vs_baseline.png`.
The training run itself is not changed, so one model evaluated on several data sets gives
several eval runs, each tagged with its data's fingerprint. `--no-log` logs nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="exact per-task NE/AUC/calibration/log loss of a trained model on an eval set",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID", help="an MLflow run id whose `model/` artifact to load, "
                       "or models:/NAME/VERSION from the model registry")
    which.add_argument("--checkpoint", metavar="PATH", help="a model directory (config.yaml, feature_spec.yaml, "
                       "checkpoint/) or a checkpoint directory (its saved config is used)")
    p.add_argument("--config", help="training config to build the model from instead of the saved one (needed for a "
                   "checkpoint older than the config saved in checkpoints)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the model's training config, as `train --set` does (repeatable)")
    p.add_argument("--data", required=True, metavar="EVAL_DIR", help="Parquet eval data (files or a folder)")
    p.add_argument("--baseline", metavar="RUN_ID|PATH", help="baseline model: run id, models:/NAME/VERSION or a path; "
                   "adds per-task deltas with bootstrap 95%% CIs")
    p.add_argument("--baseline-config", help="as --config, for --baseline")
    p.add_argument("--baseline-set", dest="baseline_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="as --set, for --baseline (repeatable)")
    p.add_argument("--tracking-uri", help="default: sqlite:///mlflow.db in the current directory")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--experiment", help="log a --checkpoint evaluation to this experiment (runs log to their own)")
    p.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    p.add_argument("--out", type=Path, help="where to keep the report and plot (default: a temporary folder)")
    p.set_defaults(func=run)


def _is_path(ref: str) -> bool:
    return Path(ref).exists() or os.sep in ref and not ref.startswith("models:/")


class _Models:
    """Resolves model references (run id, models:/NAME/VERSION, path) to loaded models."""

    def __init__(self, tracking_uri: str | None, tmp: Path) -> None:
        self.tracking_uri, self.tmp = tracking_uri, tmp
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            from recsys_mtl.config.tracking import default_tracking_uri

            if self.tracking_uri is None and not Path("mlflow.db").exists():
                raise FileNotFoundError(f"no mlflow.db in {Path.cwd()}; pass --tracking-uri")
            self.tracking_uri = self.tracking_uri or default_tracking_uri()
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def load(self, ref: str, config: str | None, is_path: bool, overrides: list[str], flags: tuple[str, str]):
        from recsys_mtl.evaluate.loading import load_model, resolve_model_dir

        if is_path:
            return load_model(ref, config, overrides=overrides, flags=flags), None
        from mlflow.exceptions import MlflowException

        try:
            local, run_id = resolve_model_dir(self.client, self.tracking_uri, ref, self.tmp / ref.replace("/", "_"))
        except MlflowException as exc:
            raise FileNotFoundError(f"{ref}: not found in the tracking store {self.tracking_uri} ({exc.message})") from None
        return load_model(local, config, source=ref, overrides=overrides, flags=flags), run_id


@dataclasses.dataclass
class EvalOutcome:
    report: Any  # recsys_mtl.metrics.offline.EvalReport
    run_id: str | None  # the evaluated model's training run
    eval_run: str | None  # the eval run logged, if any
    spooled: Path | None = None  # where what the tracking store did not take is kept (then exit 1)


def run(args: argparse.Namespace) -> int:
    return 1 if evaluate(args).spooled is not None else 0


def evaluate(args: argparse.Namespace) -> EvalOutcome:
    """What `recsys-mtl evaluate` does: load, score, report, log; prints the table."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from recsys_mtl.train.commands import quiet_library_logs

    quiet_library_logs()
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or folder")
    if not args.baseline and (args.baseline_config or args.baseline_overrides):
        from recsys_mtl.config.loader import ConfigError

        raise ConfigError("--baseline-config and --baseline-set describe a --baseline model: give --baseline too, "
                          "or use --config / --set for the evaluated model")
    with tempfile.TemporaryDirectory(prefix="recsys-mtl-eval-") as tmp:
        return _evaluate(args, Path(tmp))


def _evaluate(args: argparse.Namespace, tmp: Path) -> EvalOutcome:
    from recsys_mtl.evaluate.scoring import score_eval_set
    from recsys_mtl.metrics.offline import evaluate_predictions

    models = _Models(args.tracking_uri, tmp)
    ref = args.run or args.checkpoint
    loaded, run_id = models.load(ref, args.config, is_path=args.checkpoint is not None, overrides=args.overrides,
                                 flags=("--config", "--set"))
    names = loaded.spec.task_names
    base, baseline_run = None, None
    if args.baseline:  # loaded (and checked) before anything is scored
        base, baseline_run = models.load(args.baseline, args.baseline_config, is_path=_is_path(args.baseline),
                                         overrides=args.baseline_overrides, flags=("--baseline-config", "--baseline-set"))
        if base.spec.task_names != names:
            from recsys_mtl.config.loader import ConfigError

            raise ConfigError(f"--baseline {args.baseline} has tasks {base.spec.task_names}, the model has {names}: "
                              "compare models of the same tasks, in the same order")
        kinds = lambda spec: [(t.type, t.transform) for t in spec.tasks]  # noqa: E731
        if kinds(base.spec) != kinds(loaded.spec):
            from recsys_mtl.config.loader import ConfigError

            differ = [n for n, a, b in zip(names, kinds(base.spec), kinds(loaded.spec)) if a != b]
            raise ConfigError(f"--baseline {args.baseline}: task(s) {differ} have another type or label transform "
                              "than the model's: compare models that predict the same targets")
    print(f"scoring {args.data} with {loaded.source} (checkpoint {loaded.checkpoint.name}, {len(names)} tasks)",
          flush=True)
    logits, labels, mask = score_eval_set(loaded.model, loaded.spec, args.data, args.batch_size)

    baseline_logits = None
    if base is not None:
        print(f"scoring {args.data} with baseline {base.source}", flush=True)
        baseline_logits, base_labels, base_mask = score_eval_set(base.model, base.spec, args.data, args.batch_size)
        if not (base_labels.equal(labels) and base_mask.equal(mask)):
            from recsys_mtl.config.loader import ConfigError

            raise ConfigError(f"--baseline {args.baseline}: its feature spec reads other labels from {args.data} than "
                              "the model's: compare models whose specs name the same label columns")

    report = evaluate_predictions(logits, labels, mask, names, from_logits=True, baseline_predictions=baseline_logits,
                                  baseline=args.baseline, n_boot=args.n_boot, seed=args.seed,
                                  task_types=loaded.spec.task_types,
                                  label_transforms=[t.transform for t in loaded.spec.tasks])
    table = report.to_table()
    print(table)

    out = args.out or tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_report.txt").write_text(table + "\n")
    plot = report.save_ne_change_plot(out / "ne_change_vs_baseline.png") if report.comparison is not None else None
    if plot is not None and args.out:
        print(f"plot: {plot}")

    experiment = None
    if run_id is not None:
        experiment = models.client.get_experiment(models.client.get_run(run_id).info.experiment_id).name
    elif args.experiment:
        experiment = args.experiment
    if args.no_log or experiment is None:
        if plot is not None and not args.out:
            print("plot: not kept (nothing is logged): pass --out DIR to keep the report and the plot")
        return EvalOutcome(report, run_id, None)
    from recsys_mtl.tracking.tracker import check_task_names

    check_task_names(names, loaded.spec.name)  # before a run exists: MLflow would drop those tasks' metrics
    eval_run, spooled = _log_eval_run(models, experiment, run_id, loaded, args, baseline_run, report, out, plot)
    if spooled is not None:
        if not args.out:  # the temp folder goes when this returns: keep the spool where it can be flushed later
            kept = _durable_spool_dir() / spooled.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(spooled, kept)
            spooled = kept
        print(f"recsys-mtl evaluate: the tracking store did not take eval run {eval_run}'s metrics; they are kept in "
              f"{spooled}: upload them with `recsys-mtl tracking flush-spool {spooled.parent}`", file=sys.stderr)
    else:
        print(f"logged to eval run {eval_run} (experiment {experiment!r}"
              + (f", nested under run {run_id})" if run_id else ")"))
    return EvalOutcome(report, run_id, eval_run, spooled)


def _durable_spool_dir() -> Path:
    """Where an eval run's undelivered metrics are kept when no --out was given (XDG state folder)."""
    from recsys_mtl.tracking.tracker import SPOOL_DIRNAME

    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "recsys-mtl" / "eval" / SPOOL_DIRNAME


def _log_eval_run(models: _Models, experiment: str, run_id: str | None, loaded, args, baseline_run, report,
                  out: Path, plot: Path | None) -> tuple[str, Path | None]:
    """The eval run's id, and its spool file if the store did not take everything."""
    from recsys_mtl.config.tracking import TrackingConfig
    from recsys_mtl.tracking.tracker import RunTracker

    client = models.client
    name = client.get_run(run_id).info.run_name if run_id else Path(loaded.source).name
    tags = {"recsys_mtl.role": "eval", "recsys_mtl.model_source": loaded.source}
    if run_id:
        tags.update({"mlflow.parentRunId": run_id, "recsys_mtl.evaluated_run": run_id})
    if baseline_run:
        tags["recsys_mtl.baseline_run"] = baseline_run
    params = {"eval.data": str(Path(args.data).resolve()), "eval.model": loaded.source,
              "eval.checkpoint": loaded.checkpoint.name, "eval.baseline": args.baseline or "",
              "eval.n_boot": args.n_boot, "eval.seed": args.seed, "eval.rows": int(report.metrics.n_labelled.max())}
    cfg = TrackingConfig(tracking_uri=models.tracking_uri, experiment=experiment, system_metrics_interval_s=0,
                         plots=False, flush_interval_s=0.5)
    artifacts = [out / "eval_report.txt"]
    with RunTracker.start(cfg, run_name=f"eval {name}", params=params, tags=tags, artifacts=artifacts,
                          data_paths=[args.data], work_dir=out, rank=0) as tracker:
        tracker.log_metrics(loaded.step or 0, report.to_metrics("eval"))
        if plot is not None:
            tracker.log_artifact(plot, "plots")
    spooled = tracker.spool_path if tracker.spool_path is not None and tracker.spool_path.exists() else None
    return tracker.run_id, spooled
