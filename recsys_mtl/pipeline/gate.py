"""The promotion gate: candidate vs champion, task by task, on the same rows."""

from __future__ import annotations

import dataclasses
import math

from recsys_mtl.pipeline.config import GateConfig


@dataclasses.dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str


def decide(task_names: list[str], rel_ne_change: list[float], mean_rel_ne_change: float, gate: GateConfig) -> Decision:
    """`rel_ne_change[t]` = E(candidate)/E(champion) - 1 per task (negative is better), E the task's normalized
    error: NE for binary tasks, NMSE for regression tasks; the mean is over all tasks."""
    unknown = [t for t in gate.guarded_tasks if t not in task_names]
    if unknown:
        raise ValueError(f"gate.guarded_tasks names unknown tasks {unknown}; tasks: {', '.join(task_names)}")
    if not math.isfinite(mean_rel_ne_change):
        return Decision(False, "mean relative NE change is not finite")
    if mean_rel_ne_change >= -gate.min_mean_improvement:
        return Decision(False, f"mean relative NE change {mean_rel_ne_change:+.4%} is not below "
                               f"-{gate.min_mean_improvement:.4%}")
    worse = []
    for t in gate.guarded_tasks:
        change = rel_ne_change[task_names.index(t)]
        if math.isfinite(change) and change > gate.tolerance:
            worse.append(f"{t} {change:+.4%}")
    if worse:
        return Decision(False, f"guarded task(s) worse than tolerance {gate.tolerance:.4%}: {', '.join(worse)}")
    return Decision(True, f"mean relative NE change {mean_rel_ne_change:+.4%}; guarded tasks within tolerance")
