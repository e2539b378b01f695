"""Plots logged as run artifacts. Each function takes plain arrays and returns the saved PNG path.

- `plot_task_heatmap`: a per-task value over steps (task weights, GO4Align group ids);
  tasks on y with their names, steps on x, colorbar; the figure grows with the task count
  so labels stay readable at 64+ tasks. Weights use a log colour scale (`log_scale`): on a
  linear one a few spikes take the whole range and every other weight is one colour.
- `plot_relative_ne_change`: per-task relative NE change against a baseline, as horizontal
  bars with 95% CI whiskers (one series per compared run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _label_fontsize(n: int) -> float:
    return 9.0 if n <= 24 else 7.5 if n <= 64 else 6.0


def _save(plt, fig, ax, title: str, path: str | Path) -> Path:
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_norm(values, log_scale: bool):
    """The colour normalisation of a continuous heatmap: logarithmic between the smallest positive and the
    largest value (zeros, e.g. an absent task's weight, and non-finite values are left uncoloured), else linear."""
    from matplotlib.colors import LogNorm, Normalize

    v = np.asarray(values, dtype=float)
    positive = v[np.isfinite(v) & (v > 0)]
    if not log_scale or positive.size == 0:
        finite = v[np.isfinite(v)]
        return Normalize(*(finite.min(), finite.max()) if finite.size else (0.0, 1.0))
    lo, hi = float(positive.min()), float(positive.max())
    return LogNorm(lo, hi if hi > lo else lo * 10)


def plot_task_heatmap(values, steps: Sequence[int], task_names: Sequence[str], path: str | Path, *,
                      title: str = "", discrete: bool = False, colorbar_label: str = "",
                      log_scale: bool = False, task_types: Sequence[str] | None = None) -> Path:
    """values: [S, T] (one row per logged step). With `discrete`, integer values (group ids) get one
    colour each and a labelled colorbar tick per group; with `log_scale`, colours follow log(value) and
    values <= 0 are left blank (light grey). `task_types` marks regression tasks among binary ones."""
    plt = _pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap

    v = np.asarray(values, dtype=float)
    steps = np.asarray(steps)
    S, T = v.shape
    if len(task_names) != T or len(steps) != S:
        raise ValueError(f"values is [S={S}, T={T}] but got {len(steps)} steps and {len(task_names)} task names")
    row_h = 0.16 if T > 24 else 0.28
    fig, ax = plt.subplots(figsize=(11, max(3.0, 1.4 + row_h * T)), layout="constrained")
    x_edges = np.concatenate([steps, [steps[-1] + (steps[-1] - steps[-2] if S > 1 else 1)]]).astype(float)
    y_edges = np.arange(T + 1) - 0.5
    if discrete:
        finite = v[np.isfinite(v)]
        lo, hi = (int(finite.min()), int(finite.max())) if finite.size else (0, 1)
        levels = np.arange(lo, hi + 2) - 0.5
        n = len(levels) - 1
        base = plt.get_cmap("tab10" if n <= 10 else "tab20")
        cmap = ListedColormap([base(i % base.N) for i in range(n)])
        mesh = ax.pcolormesh(x_edges, y_edges, v.T, cmap=cmap, norm=BoundaryNorm(levels, n), shading="flat")
        cbar = fig.colorbar(mesh, ax=ax, ticks=np.arange(lo, hi + 1), pad=0.01)
    else:
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
        shown = np.ma.masked_where(~np.isfinite(v) | (v <= 0), v) if log_scale else v
        mesh = ax.pcolormesh(x_edges, y_edges, shown.T, cmap=cmap, norm=heatmap_norm(v, log_scale), shading="flat")
        cbar = fig.colorbar(mesh, ax=ax, pad=0.01)
    cbar.set_label(colorbar_label)
    ax.set_yticks(np.arange(T))
    ax.set_yticklabels(task_labels(task_names, task_types), fontsize=_label_fontsize(T))
    ax.set_ylim(T - 0.5, -0.5)  # first task on top
    ax.set_xlabel("step")
    ax.set_ylabel("task")
    return _save(plt, fig, ax, title, path)


def task_labels(task_names: Sequence[str], task_types: Sequence[str] | None, mark: str = "regression") -> list[str]:
    """Axis labels of tasks: a regression task is marked `(mark)` when binary tasks share the axis (e.g. `(nmse)`:
    which normalized error its value is)."""
    if not task_types or all(t == task_types[0] for t in task_types):
        return list(task_names)
    return [f"{n} ({mark})" if t == "regression" else n for n, t in zip(task_names, task_types)]


def plot_relative_ne_change(task_names: Sequence[str], rel_change, path: str | Path, *, ci=None,
                            series_names: Sequence[str] | None = None, title: str = "",
                            task_types: Sequence[str] | None = None, error_label: str = "NE") -> Path:
    """rel_change: [T] or [R, T] (normalized error of the run / of the baseline - 1: NE for binary tasks, NMSE
    for regression tasks, `task_types`; `error_label` names it on the axis, e.g. "NE|NMSE"); ci: matching [.., T, 2]
    or None.
    Bars are in percent; negative (left, green) is better."""
    plt = _pyplot()

    rel = np.atleast_2d(np.asarray(rel_change, dtype=float)) * 100
    R, T = rel.shape
    if len(task_names) != T:
        raise ValueError(f"{T} values but {len(task_names)} task names")
    cis = None if ci is None else np.asarray(ci, dtype=float).reshape(R, T, 2) * 100
    names = list(series_names) if series_names is not None else [f"run {i + 1}" for i in range(R)]
    row_h = 0.18 if T > 24 else 0.32
    fig, ax = plt.subplots(figsize=(9, max(3.0, 1.5 + row_h * T * max(1, R * 0.6))), layout="constrained")
    height = 0.8 / R
    y = np.arange(T)
    for r in range(R):
        pos = y - 0.4 + height * (r + 0.5)
        if R == 1:
            colors = np.where(rel[r] <= 0, "tab:green", "tab:red")
        else:
            colors = plt.get_cmap("tab10")(r % 10)
        xerr = None
        if cis is not None:
            lo = np.clip(rel[r] - cis[r, :, 0], 0, None)
            hi = np.clip(cis[r, :, 1] - rel[r], 0, None)
            xerr = np.nan_to_num(np.stack([lo, hi]))
        ax.barh(pos, np.nan_to_num(rel[r]), height=height * 0.9, color=colors, xerr=xerr,
                error_kw={"elinewidth": 0.8, "capsize": 1.5}, label=names[r])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(task_labels(task_names, task_types, "nmse"), fontsize=_label_fontsize(T))
    ax.set_ylim(T - 0.5, -0.5)
    ax.set_xlabel(f"relative {error_label} change vs baseline (%)  -  lower is better")
    ax.grid(axis="x", alpha=0.3)
    if R > 1:
        ax.legend(loc="best", fontsize=8)
    return _save(plt, fig, ax, title, path)
