"""Issue 20, item 6: what adding the play_time_ms regression head does, from two weighting-experiment folders.

    python results/regression/head_effect.py results/regression/kuairand_no_head results/weighting/kuairand_play_time

Both folders' `equal` runs (same seeds, same prepared data and test rows): the first trained the 7 binary tasks,
the second the same model plus the play_time_ms head. Prints per seed and pooled (mean +- std over seeds):
the play-time NMSE of the model with the head, and each binary task's NE with and without the head, its
relative change (mean +- std over seeds), and for the mean over tasks a paired bootstrap 95% CI over test
rows (seeds side by side, as the experiment does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from recsys_mtl.metrics.offline import compare_models, task_metrics


def load(folder: Path, seed: int) -> dict:
    return torch.load(folder / "runs" / "equal" / f"seed{seed}" / "predictions.pt")


def main(no_head: Path, with_head: Path, n_boot: int = 1000) -> None:
    seeds = sorted(int(p.name[4:]) for p in (no_head / "runs" / "equal").glob("seed*")
                   if (p / "predictions.pt").exists() and (with_head / "runs" / "equal" / p.name / "predictions.pt").exists())
    a = [load(no_head, s) for s in seeds]
    b = [load(with_head, s) for s in seeds]
    tasks = a[0]["tasks"]
    cols = [b[0]["tasks"].index(t) for t in tasks]  # the binary tasks' columns in the model with the head
    reg = [j for j, k in enumerate(b[0]["task_types"]) if k == "regression"]
    for x, y in zip(a, b):
        if not torch.equal(x["labels"].float(), y["labels"][:, cols].float()) or not torch.equal(x["mask"], y["mask"][:, cols]):
            raise SystemExit("the two folders' test rows differ: same prepared data expected")
    print(f"seeds {seeds}; test rows {a[0]['labels'].shape[0]}")
    mb = [task_metrics(y["logits"], y["labels"], y["mask"], from_logits=True, task_types=y["task_types"],
                       label_transforms=y["label_transforms"]) for y in b]
    for j in reg:
        nmse = [m.normalized_error[j] for m in mb]
        print(f"{b[0]['tasks'][j]} NMSE with the head: " + ", ".join(f"{v:.4f}" for v in nmse)
              + f"; mean {np.mean(nmse):.4f} +- {np.std(nmse, ddof=1) if len(nmse) > 1 else 0:.4f}")
    ne_a = np.stack([task_metrics(x["logits"], x["labels"], x["mask"], from_logits=True).ne for x in a])
    ne_b = np.stack([m.normalized_error[cols] for m in mb])
    rel = ne_b / ne_a - 1
    c = compare_models(torch.cat([x["logits"] for x in a], 1), torch.cat([y["logits"][:, cols] for y in b], 1),
                       torch.cat([x["labels"] for x in a], 1), torch.cat([x["mask"] for x in a], 1),
                       from_logits=True, n_boot=n_boot, seed=0)
    print("\n| task | NE without head | NE with head | rel. change (mean +- std over seeds) |")
    print("|---|---|---|---|")
    for t, task in enumerate(tasks):
        print(f"| {task} | {ne_a[:, t].mean():.4f} | {ne_b[:, t].mean():.4f} | {100 * rel[:, t].mean():+.2f} +- "
              f"{100 * rel[:, t].std(ddof=1):.2f}% |")
    per_seed = rel.mean(1)
    print(f"\nmean over binary tasks: {100 * per_seed.mean():+.2f} +- {100 * per_seed.std(ddof=1):.2f}% "
          f"(per seed {', '.join(f'{100 * v:+.2f}%' for v in per_seed)}); pooled paired bootstrap 95% CI "
          f"[{100 * c.mean_rel_ne_change_ci[0]:+.2f}%, {100 * c.mean_rel_ne_change_ci[1]:+.2f}%] ({n_boot} replicates)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
