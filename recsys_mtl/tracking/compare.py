"""Compare runs task by task from their logged eval metrics (built on MlflowClient.search_runs).

Reads the latest `eval/ne/<task>`, `eval/auc/<task>`, `eval/calibration/<task>` and
`eval/logloss/<task>` (and `eval/gauc/<task>` where an evaluation logged grouped AUC) of each run's binary tasks, and `eval/nmse/<task>`, `eval/rmse/<task>` of its
regression tasks; the first run is the reference for the change of each task's normalized error (NE, or
NMSE for a regression task).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from recsys_mtl.metrics.names import (AUC, BINARY, CALIBRATION, GAUC, LOGLOSS, NE, NMSE, NORMALIZED_ERRORS, REGRESSION,
                                       RMSE)

log = logging.getLogger(__name__)

METRICS = (NE, NMSE, AUC, CALIBRATION, LOGLOSS, RMSE, GAUC)
#: the metrics that say a run was evaluated on a task: its normalized error (NE, or NMSE for regression tasks)
_NORMALIZED_ERROR_PREFIXES = tuple(f"eval/{name}/" for name in NORMALIZED_ERRORS)


def _normalized_error_task(key: str) -> str | None:
    for prefix in _NORMALIZED_ERROR_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


@dataclasses.dataclass
class RunComparison:
    run_ids: list[str]
    run_names: list[str]
    tasks: list[str]
    values: dict[str, np.ndarray]  # metric -> [R, T], NaN where a run lacks the metric

    @property
    def task_types(self) -> list[str]:
        """"regression" for a task some run logged NMSE for, else "binary"."""
        return [REGRESSION if np.isfinite(self.values[NMSE][:, t]).any() else BINARY
                for t in range(len(self.tasks))]

    @property
    def normalized_error(self) -> np.ndarray:
        """[R, T]: NE of binary tasks, NMSE of regression tasks."""
        regression = np.array([k == REGRESSION for k in self.task_types], dtype=bool)
        return np.where(regression[None, :], self.values[NMSE], self.values[NE])

    @property
    def rel_ne_change(self) -> np.ndarray:
        """[R, T]: E_run / E_first - 1 of each task's normalized error E (NE or NMSE)."""
        error = self.normalized_error
        with np.errstate(all="ignore"):
            return error / error[:1] - 1

    def to_table(self) -> str:
        def f(x: float, spec: str) -> str:
            return "-" if math.isnan(x) else format(x, spec)

        from recsys_mtl.metrics.names import normalized_error_label

        types = self.task_types
        regression = "regression" in types
        error_name = normalized_error_label(types)
        grouped = bool(np.isfinite(self.values[GAUC]).any()) if GAUC in self.values else False
        head = ["task", "run", error_name, "AUC", "calib", "logloss"] + (["RMSE"] if regression else [])
        head += ["GAUC"] if grouped else []
        head += [f"{error_name} chg % vs first"]
        rows = []
        rel, error = self.rel_ne_change, self.normalized_error
        for t, task in enumerate(self.tasks):
            label = f"{task} (nmse)" if regression and types[t] == "regression" else task
            for r, name in enumerate(self.run_names):
                v = {m: self.values[m][r, t] if m in self.values else math.nan for m in METRICS}
                rows.append([label if r == 0 else "", name, f(error[r, t], ".5f"), f(v[AUC], ".5f"),
                             f(v[CALIBRATION], ".4f"), f(v[LOGLOSS], ".5f")]
                            + ([f(v[RMSE], ".5f")] if regression else [])
                            + ([f(v[GAUC], ".5f")] if grouped else [])
                            + ["ref" if r == 0 else f(100 * rel[r, t], "+.3f")])
        for r, name in enumerate(self.run_names[1:], start=1):
            with np.errstate(all="ignore"):
                mean = np.nanmean(rel[r]) if np.isfinite(rel[r]).any() else float("nan")
            rows.append(["(mean)", name, "", "", "", ""] + ([""] if regression else []) + ([""] if grouped else [])
                        + [f(100 * mean, "+.3f")])
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)


def find_runs(client, run_ids: Sequence[str] = (), experiment: str | None = None, filter_string: str = "",
              max_results: int = 50) -> list:
    """Runs by id (in the order given), or the newest `max_results` runs of an experiment that match an MLflow
    filter and have eval metrics, oldest first (the first is the reference).

    Metric names with '/' need backticks in filters: metrics.`eval/ne/ctr` < 0.8.
    """
    if run_ids:
        from mlflow.exceptions import MlflowException

        runs, missing = [], []
        for r in run_ids:  # one lookup each: a search over experiments sees only its first page of them
            try:
                runs.append(client.get_run(r))
            except MlflowException:
                missing.append(r)
        if missing:
            raise ValueError(f"no run with id {', '.join(missing)} in the tracking store")
        return runs
    if experiment is None:
        raise ValueError("give run ids, or --experiment NAME (with an optional --filter)")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no experiment named {experiment!r} in the tracking store")
    runs, skipped, more, token = [], [], False, None
    while True:  # newest first, page by page, until max_results runs with eval metrics
        page = client.search_runs([exp.experiment_id], filter_string, max_results=max(100, max_results + 1),
                                  order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            evaluated = any(_normalized_error_task(k) for k in run.data.metrics)
            if evaluated and len(runs) == max_results:
                more = True  # an older evaluated run is left out
                break
            (runs if evaluated else skipped).append(run)
        token = page.token
        if more or not token:
            break
    if skipped:
        log.warning("left out %d run(s) without eval metrics (failed, running, or not evaluated): %s%s",
                    len(skipped), ", ".join(r.info.run_id[:8] for r in skipped[:10]),
                    ", ..." if len(skipped) > 10 else "")
    if more:
        log.warning("experiment %r has more than %d matching runs with eval metrics: comparing the newest %d "
                    "(--max-runs)", experiment, max_results, max_results)
    if not runs:
        raise ValueError(f"no run with eval metrics in experiment {experiment!r} matches filter {filter_string!r}")
    return runs[::-1]


def compare_runs(runs: Sequence) -> RunComparison:
    per_run = [[t for t in map(_normalized_error_task, run.data.metrics) if t] for run in runs]
    tasks = list(dict.fromkeys(t for names in per_run for t in names))  # in first-seen order
    if not tasks:
        raise ValueError("none of the runs has eval/ne/<task> (or eval/nmse/<task>) metrics")
    shared = set.intersection(*map(set, per_run))
    if len(shared) < len(tasks):
        log.warning("the runs score different tasks (%d in all, %d shared%s): NE changes, and their mean, cover only "
                    "the tasks a run shares with the first; are they on the same data?", len(tasks), len(shared),
                    f": {', '.join(sorted(shared))}" if len(shared) <= 10 else "")
    values = {m: np.full((len(runs), len(tasks)), np.nan) for m in METRICS}
    for r, run in enumerate(runs):
        for m in METRICS:
            for t, task in enumerate(tasks):
                v = run.data.metrics.get(f"eval/{m}/{task}")
                if v is not None:
                    values[m][r, t] = v
    names = [run.info.run_name or run.info.run_id[:8] for run in runs]
    names = [f"{n} ({run.info.run_id[:8]})" for n, run in zip(names, runs)]
    return RunComparison([run.info.run_id for run in runs], names, tasks, values)


def plot_comparison(comparison: RunComparison, path: str | Path) -> Path:
    from recsys_mtl.tracking.plots import plot_relative_ne_change

    rel = comparison.rel_ne_change[1:] if len(comparison.run_ids) > 1 else comparison.rel_ne_change
    names = comparison.run_names[1:] if len(comparison.run_ids) > 1 else comparison.run_names
    from recsys_mtl.metrics.names import normalized_error_label

    types = comparison.task_types
    return plot_relative_ne_change(comparison.tasks, rel, path, series_names=names, task_types=types,
                                   error_label=normalized_error_label(types),
                                   title=f"{normalized_error_label(types)} change vs {comparison.run_names[0]}")
