"""Compact tables from `recsys-mtl experiment weighting` results.json files (issue 26, items 3 and 4).

    python results/weighting/tables.py results/weighting/kuairand [more result folders ...]

One row per method: the mean relative normalized error change vs the baseline (mean +- std over seeds),
its pooled paired-bootstrap 95% CI, tasks better / worse than the baseline (per seed), the worst task
(largest relative change, mean over seeds) and the largest weight. Reads only results.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _pct(x, spec="+.2f"):
    return "nan" if x is None or not math.isfinite(x) else format(100 * x, spec) + "%"


def table(folder: Path) -> str:
    res = json.loads((folder / "results.json").read_text())
    base, tasks = res["baseline"], res["tasks"]
    lines = [f"### {folder} ({len(tasks)} tasks, seeds {res['seeds']}, baseline {base})", "",
             "| method | mean rel. change vs equal | 95% CI | better / worse (per seed) | worst task | largest weight |",
             "|---|---|---|---|---|---|"]
    for name, m in res["methods"].items():
        if name == base:
            lines.append(f"| {name} | 0 (baseline) | - | - | - | 1 |")
            continue
        seeds = m["seeds_done"]
        rel = m["mean_rel_ne_change"]
        std = m.get("mean_rel_ne_change_std")
        text = _pct(rel) + (f" +- {_pct(std, '.2f')}" if len(seeds) > 1 and std is not None else "")
        pb = m.get("pooled_bootstrap")
        ci = f"[{_pct(pb['ci95'][0])}, {_pct(pb['ci95'][1])}]" if pb else "-"
        counts = []
        for s in seeds:
            row = m["per_seed"][str(s)].get("rel_ne_change")
            if row is not None:
                vals = [v for v in row if v is not None and math.isfinite(v)]
                counts.append(f"{sum(v < 0 for v in vals)}/{sum(v > 0 for v in vals)}")
        per_task = [(v, t) for v, t in zip(m["rel_ne_change_mean"], tasks) if v is not None and math.isfinite(v)]
        worst = max(per_task) if per_task else (float("nan"), "-")
        lw = m.get("largest_weight")
        lines.append(f"| {name} | {text} | {ci} | {' '.join(counts)} | {worst[1]} ({_pct(worst[0])}) "
                     f"| {'nan' if lw is None else format(lw, '.3g')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(Path(arg)))
