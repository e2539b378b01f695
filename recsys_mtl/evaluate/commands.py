"""`recsys-mtl evaluate`: per-task metrics of a trained model on an eval set, optionally vs a baseline.

    recsys-mtl evaluate --run RUN_ID --data data/eval [--baseline BASELINE_RUN_ID] [--nproc N]
    recsys-mtl evaluate --run models:/NAME/VERSION --data data/eval
    recsys-mtl evaluate --checkpoint runs/x/checkpoints --data data/eval [--set k=v ...] [--exact]

The model is loaded on CPU, unsharded, from its DCP checkpoint (however many ranks saved it).
Metrics (binary tasks: NE, AUC, calibration = sum(p) / sum(y), log loss; regression tasks: NMSE = MSE /
label variance, MSE, RMSE, MAE on the transformed label, MAE on the raw scale) are over labelled rows only.
By default they stream: per-task sums and fine logit histograms for AUC (within 1e-4 of exact), memory
independent of the number of rows; with a baseline, both models score each batch and per-task deltas of
the normalized error (NE, or NMSE) and AUC get 95% CIs from a Poisson bootstrap keyed by row position.
`--nproc N` runs N processes (torchrun), each scoring its row groups; their statistics are summed, so
results equal one process's to float tolerance. `--exact` keeps every row in memory (one process): exact
AUC and a paired bootstrap over row buckets, the reference for small sets.
`--gauc-group user_id` (or the config's `evaluation.gauc_group`) adds each binary task's grouped AUC (GAUC: the
AUC within each user, averaged with the user's labelled rows as weights, single-class users skipped; exact in both
modes, recsys_mtl.metrics.grouped), logged as `eval/gauc/<task>` (with a baseline also `eval/delta_gauc/<task>`).

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
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from recsys_mtl.argtypes import at_least_one
from recsys_mtl.evaluate import SCORING_BATCH_SIZE
from recsys_mtl.evaluate.loading import ModelRefs, is_path_ref


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="exact per-task NE/AUC/calibration/log loss of a trained model on an eval set",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID", help="an MLflow run id whose `model/` artifact to load, "
                       "or models:/NAME/VERSION or models:/NAME@ALIAS from the model registry")
    which.add_argument("--checkpoint", metavar="PATH", help="a model directory (config.yaml, feature_spec.yaml, "
                       "checkpoint/) or a checkpoint directory (its saved config is used)")
    p.add_argument("--config", help="training config to build the model from instead of the saved one (needed for a "
                   "checkpoint older than the config saved in checkpoints)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the model's training config, as `train --set` does (repeatable)")
    p.add_argument("--data", required=True, metavar="EVAL_DIR", help="Parquet eval data (files or a folder)")
    p.add_argument("--baseline", metavar="RUN_ID|PATH", help="baseline model: run id, models:/NAME/VERSION, models:/NAME@ALIAS or a path; "
                   "adds per-task deltas with bootstrap 95%% CIs")
    p.add_argument("--baseline-config", help="as --config, for --baseline")
    p.add_argument("--baseline-set", dest="baseline_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="as --set, for --baseline (repeatable)")
    p.add_argument("--tracking-uri", help="default: sqlite:///mlflow.db in the current directory")
    p.add_argument("--gauc-group", metavar="COLUMN", help="add grouped AUC per task over the groups of this Parquet "
                   "column (e.g. user_id); default: the model config's evaluation.gauc_group")
    p.add_argument("--batch-size", type=at_least_one("rows"), default=SCORING_BATCH_SIZE,
                   help="rows per forward pass (default %(default)s: fastest on CPU, docs/performance.md)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--experiment", help="log a --checkpoint evaluation to this experiment (runs log to their own)")
    p.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    p.add_argument("--out", type=Path, help="where to keep the report, its metrics (eval_metrics.json) and the plot "
                   "(default: a temporary folder)")
    p.add_argument("--exact", action="store_true", help="keep every row's scores in memory: exact AUC (one process, "
                   "small sets; the streaming default is within 1e-4)")
    p.add_argument("--nproc", type=at_least_one("processes"), default=None,
                   help="score with N processes on this machine through torchrun (default: 1)")
    p.set_defaults(func=run)


@dataclasses.dataclass
class EvalOutcome:
    report: Any  # recsys_mtl.metrics.offline.EvalReport
    run_id: str | None  # the evaluated model's training run
    eval_run: str | None  # the eval run logged, if any
    spooled: Path | None = None  # where what the tracking store did not take is kept (then exit 1)


def run(args: argparse.Namespace) -> int:
    if args.nproc and args.nproc > 1 and args.exact:
        from recsys_mtl.config.loader import ConfigError

        raise ConfigError("--exact keeps every row in one process: drop --nproc, or drop --exact to stream")
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if not Path(args.data).exists():  # once, before starting N processes that would each say so
            raise FileNotFoundError(f"--data {args.data}: no such file or folder")
        from recsys_mtl.train.commands import launch_command

        return launch_command(getattr(args, "command_argv", None) or sys.argv[1:], args.nproc, "evaluation")
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
    world = _join_workers()
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-mtl-eval-") as tmp:
            return _evaluate(args, Path(tmp), *world)
    finally:
        if world[1] > 1:
            from recsys_mtl.train.distributed import shutdown_distributed

            shutdown_distributed()


def _join_workers() -> tuple[int, int]:
    """(rank, world size): torchrun's group when launched by it (gloo, CPU), else (0, 1) without a group."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    from recsys_mtl.train.distributed import die_with_launcher, init_distributed

    die_with_launcher()
    env = init_distributed("cpu")
    return env.rank, env.world_size


def _evaluate(args: argparse.Namespace, tmp: Path, rank: int = 0, world_size: int = 1) -> EvalOutcome:
    models = ModelRefs(args.tracking_uri, tmp)
    ref = args.run or args.checkpoint
    loaded, run_id = models.load(ref, args.config, is_path=args.checkpoint is not None, overrides=args.overrides,
                                 flags=("--config", "--set"))
    names = loaded.spec.task_names
    base, baseline_run = None, None
    if args.baseline:  # loaded (and checked) before anything is scored
        base, baseline_run = models.load(args.baseline, args.baseline_config, is_path=is_path_ref(args.baseline),
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
    gauc_group = getattr(args, "gauc_group", None) or loaded.config.evaluation.gauc_group
    if gauc_group:  # a bad column is found before anything is scored
        from recsys_mtl.evaluate.scoring import check_group_column

        check_group_column(args.data, gauc_group, loaded.spec)
    if rank == 0:
        what = f" with baseline {base.source}" if base is not None else ""
        how = "exact, in memory" if args.exact else f"streaming, {world_size} process{'es' * (world_size > 1)}"
        print(f"scoring {args.data} with {loaded.source} (checkpoint {loaded.checkpoint.name}, {len(names)} tasks)"
              f"{what} [{how}]", flush=True)
    report = (_exact_report(args, loaded, base, gauc_group) if args.exact else
              _streaming_report(args, loaded, base, rank, world_size, gauc_group))
    if rank != 0:  # rank 0 prints and logs what every rank computed
        return EvalOutcome(report, run_id, None)
    table = report.to_table()
    print(table)

    out = args.out or tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_report.txt").write_text(table + "\n")
    (out / "eval_metrics.json").write_text(json.dumps(_metrics_record(report), indent=1, sort_keys=True) + "\n")
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


def _metrics_record(report) -> dict[str, Any]:
    """What eval_metrics.json holds: the logged metrics, and with a baseline the 95% intervals per task."""
    record: dict[str, Any] = {"metrics": report.to_metrics("eval")}
    c = report.comparison
    if c is not None:
        record["intervals"] = {
            f"eval/{name}/{task}": [float(lo), float(hi)]
            for name, ci in (("delta_ne", c.delta_ne_ci), ("delta_auc", c.delta_auc_ci), ("rel_ne_change", c.rel_ne_change_ci))
            for task, (lo, hi) in zip(report.task_names, ci)}
        record["intervals"]["eval/mean_rel_ne_change"] = list(c.mean_rel_ne_change_ci)
    return record


def _exact_report(args: argparse.Namespace, loaded, base, gauc_group: str | None = None):
    """Every row's logits in memory: exact AUC, paired bootstrap over row buckets."""
    from recsys_mtl.evaluate.scoring import eval_set_groups, score_eval_set
    from recsys_mtl.metrics.offline import evaluate_predictions

    logits, labels, mask = score_eval_set(loaded.model, loaded.spec, args.data, args.batch_size)
    baseline_logits = None
    if base is not None:
        baseline_logits, base_labels, base_mask = score_eval_set(base.model, base.spec, args.data, args.batch_size)
        if not (base_labels.equal(labels) and base_mask.equal(mask)):
            from recsys_mtl.config.loader import ConfigError

            raise ConfigError(f"--baseline {args.baseline}: its feature spec reads other labels from {args.data} than "
                              "the model's: compare models whose specs name the same label columns")
    groups = eval_set_groups(args.data, gauc_group, loaded.spec, labels, mask) if gauc_group else None
    return evaluate_predictions(logits, labels, mask, loaded.spec.task_names, from_logits=True,
                                baseline_predictions=baseline_logits, baseline=args.baseline, n_boot=args.n_boot,
                                seed=args.seed, task_types=loaded.spec.task_types,
                                label_transforms=[t.transform for t in loaded.spec.tasks], groups=groups,
                                gauc_group=gauc_group)


def _streaming_report(args: argparse.Namespace, loaded, base, rank: int, world_size: int,
                      gauc_group: str | None = None):
    """Per-task statistics streamed over this rank's row groups, summed over the ranks."""
    from recsys_mtl.evaluate.scoring import score_statistics

    models = [loaded] + ([base] if base is not None else [])
    if args.n_boot < 10 and base is not None:
        from recsys_mtl.config.loader import ConfigError

        raise ConfigError(f"--n-boot {args.n_boot}: the bootstrap needs at least 10 replicates")
    with _progress(rank, args.data) as bar:
        evaluator = score_statistics([m.model for m in models], [m.spec for m in models], args.data, args.batch_size,
                                     n_boot=args.n_boot, seed=args.seed, rank=rank, world_size=world_size,
                                     on_batch=bar.update, gauc_group=gauc_group)
    report = evaluator.report(loaded.spec.task_names, baseline=args.baseline)
    if evaluator.grouped_scores is not None and rank == 0:  # exact GAUC from the rows gathered on rank 0
        report.gauc, report.gauc_group = evaluator.grouped_scores.gauc(0).gauc, gauc_group
        if base is not None:
            report.baseline_gauc = evaluator.grouped_scores.gauc(1).gauc
    return report


def _progress(rank: int, data: str):
    """A rows-scored bar on rank 0's terminal (nothing in a log file or on other ranks)."""
    from tqdm import tqdm

    return tqdm(desc=f"scoring (rank 0's share)" if os.environ.get("WORLD_SIZE", "1") != "1" else "scoring",
                unit="row", unit_scale=True, disable=rank != 0 or not sys.stderr.isatty(), mininterval=1.0)


def _durable_spool_dir() -> Path:
    """Where an eval run's undelivered metrics are kept when no --out was given (XDG state folder)."""
    from recsys_mtl.tracking.tracker import SPOOL_DIRNAME

    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "recsys-mtl" / "eval" / SPOOL_DIRNAME


def _log_eval_run(models: ModelRefs, experiment: str, run_id: str | None, loaded, args, baseline_run, report,
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
