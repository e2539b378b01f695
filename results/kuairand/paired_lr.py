"""Paired test of the model against the per-task one-hot logistic regression, on the same test rows.

Train the committed config for some seeds, then compare each seed's model with the LR (C = 0.1 and C = 1):

    for S in 0 1 2; do recsys-mtl train configs/kuairand.yaml --set train.seed=$S \
        --set tracking.enabled=false --set train.output_dir=/tmp/kr/r$S; done
    python results/kuairand/paired_lr.py --data data/kuairand /tmp/kr/r0 /tmp/kr/r1 /tmp/kr/r2

First it prints the LR's AUC per task for each C in `--sweep` (with no runs given, only that: e.g. on a
validation fold, `--data data/kuairand_valid`). Then, per task and seed, it prints AUC(model) - AUC(LR) with two intervals for it: the paired row bootstrap of
`recsys_mtl.metrics.compare_models` (the one `recsys-mtl evaluate --baseline` reports) and DeLong's
standard error for two correlated AUCs (DeLong, DeLong and Clarke-Pearson, Biometrics 1988), with its
two-sided p. The LR is the one of results/kuairand/README.md: sklearn LogisticRegression on the one-hot
sparse columns (ids and user categoricals), fitted on the train days.

When the data has `play_time_ms` (as `recsys-mtl data kuairand` writes it), it also fits a ridge regression of
log1p(play_time_ms) on the same one-hot columns (alpha = 1 / C) and prints its test NMSE (MSE / label variance) per C;
runs trained with feature_specs/kuairand_play_time.yaml (`--config configs/kuairand_play_time.yaml`) are compared
with it on NMSE by the same paired bootstrap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from recsys_mtl.data.kuairand import PLAY_TIME, TASKS, USER_CATEGORICAL
from recsys_mtl.evaluate.loading import load_model
from recsys_mtl.evaluate.scoring import score_eval_set
from recsys_mtl.metrics.offline import compare_models

ONE_HOT = ["user_id", "video_id"] + USER_CATEGORICAL


def read_split(root: Path, split: str):
    """Every Parquet file of `root/split` in path order: the order `score_eval_set` reads rows in."""
    files = [f for f in sorted((root / split).rglob("*.parquet")) if f.is_file()]
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """AUC(b) - AUC(a) on the same rows, DeLong's standard error of it and the two-sided p."""
    pos, neg = y == 1, y == 0

    def components(s: np.ndarray):
        wins = (s[pos][:, None] > s[neg][None]) + 0.5 * (s[pos][:, None] == s[neg][None])
        return wins.mean(), wins.mean(1), wins.mean(0)

    auc_a, a10, a01 = components(a)
    auc_b, b10, b01 = components(b)
    s10, s01 = np.cov(np.stack([a10, b10])), np.cov(np.stack([a01, b01]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.sum()
    diff, se = auc_b - auc_a, float(np.sqrt(var))
    p = 2 * norm.sf(abs(diff) / se) if se > 0 else float(diff == 0)  # se = 0: identical rankings
    return float(diff), se, float(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="train.output_dir of each seed's run (its checkpoints/)")
    ap.add_argument("--data", type=Path, default=Path("data/kuairand"), help="prepared data (train/, test/)")
    ap.add_argument("--config", default="configs/kuairand.yaml", help="the config the runs trained")
    ap.add_argument("--C", type=float, nargs="+", default=[0.1, 1.0], help="the LRs the runs are compared with")
    ap.add_argument("--sweep", type=float, nargs="+", default=[0.03, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0],
                    help="the Cs of the LR sweep")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()

    train, test = read_split(args.data, "train"), read_split(args.data, "test")
    enc = OneHotEncoder(handle_unknown="ignore").fit(train[ONE_HOT])
    x_train, x_test = enc.transform(train[ONE_HOT]), enc.transform(test[ONE_HOT])
    labelled = test[TASKS].notna().to_numpy()
    y = np.nan_to_num(test[TASKS].to_numpy(dtype=float))
    lr = {}
    for c in sorted(set(args.C) | set(args.sweep)):
        lr[c] = np.zeros(y.shape)
        for j, task in enumerate(TASKS):
            has = train[task].notna().to_numpy()
            fit = LogisticRegression(C=c, max_iter=3000).fit(x_train[has], train[task][has])
            lr[c][:, j] = fit.predict_proba(x_test)[:, 1]

    def auc(p: np.ndarray, j: int) -> float:
        return roc_auc_score(y[labelled[:, j], j], p[labelled[:, j], j])

    print(f"LR AUC on {args.data / 'test'} (positives: "
          + ", ".join(f"{t} {int(y[labelled[:, j], j].sum())}" for j, t in enumerate(TASKS)) + ")")
    print("| C | " + " | ".join(TASKS) + " |")
    print("| --- |" + " --- |" * len(TASKS))
    for c in args.sweep:
        print(f"| {c:g} | " + " | ".join(f"{auc(lr[c], j):.4f}" for j in range(len(TASKS))) + " |")
    ridge: dict[float, np.ndarray] = {}
    if PLAY_TIME in train.columns:
        y_play_train = np.log1p(train[PLAY_TIME].to_numpy(dtype=float))
        y_play = np.log1p(test[PLAY_TIME].to_numpy(dtype=float))
        for c in sorted(set(args.C) | set(args.sweep)):
            ridge[c] = Ridge(alpha=1.0 / c).fit(x_train, y_play_train).predict(x_test)
        print()
        print(f"ridge regression of log1p({PLAY_TIME}): test NMSE (MSE / label variance; 1 = predicting the mean)")
        print("| C | NMSE |")
        print("| --- | --- |")
        for c in args.sweep:
            print(f"| {c:g} | {np.mean((ridge[c] - y_play) ** 2) / np.var(y_play):.4f} |")
    if not args.runs:
        return
    print()
    print("| model | C | task | AUC model | AUC LR | model - LR | bootstrap 95% | DeLong se | p |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        loaded = load_model(run / "checkpoints", args.config)
        logits, labels, mask = score_eval_set(loaded.model, loaded.spec, args.data / "test", 2048)
        binary = [loaded.spec.task_names.index(t) for t in TASKS]
        if not (np.array_equal(mask[:, binary].numpy().astype(bool), labelled)
                and np.array_equal(np.where(labelled, labels[:, binary].numpy(), 0), y)):
            raise SystemExit(f"{run}: the scored rows are not the test files' rows in path order")
        if PLAY_TIME in loaded.spec.task_names and ridge:
            j = loaded.spec.task_names.index(PLAY_TIME)
            model_play = logits[:, j].double()[:, None]
            for c in args.C:
                cmp = compare_models(torch.from_numpy(ridge[c])[:, None], model_play,
                                     torch.from_numpy(y_play)[:, None], n_boot=args.n_boot, seed=0,
                                     task_types=["regression"])
                nmse_model = float(np.mean((model_play[:, 0].numpy() - y_play) ** 2) / np.var(y_play))
                lo, hi = cmp.rel_ne_change_ci[0]
                print(f"| {run.name} | {c:g} | {PLAY_TIME} (NMSE) | {nmse_model:.4f} | "
                      f"{np.mean((ridge[c] - y_play) ** 2) / np.var(y_play):.4f} | {100 * cmp.rel_ne_change[0]:+.2f}% | "
                      f"[{100 * lo:+.2f}%, {100 * hi:+.2f}%] | - | - |")
        p = torch.sigmoid(logits[:, binary]).double().numpy()
        for c in args.C:
            q = lr[c]
            cmp = compare_models(torch.from_numpy(q), torch.from_numpy(p), torch.from_numpy(y),
                                 torch.from_numpy(labelled), n_boot=args.n_boot, seed=0)
            for j, task in enumerate(TASKS):
                diff, se, pval = delong(y[labelled[:, j], j], q[labelled[:, j], j], p[labelled[:, j], j])
                lo, hi = cmp.delta_auc_ci[j]
                print(f"| {run.name} | {c:g} | {task} | {auc(p, j):.4f} | {auc(q, j):.4f} | {diff:+.4f} | "
                      f"[{lo:+.3f}, {hi:+.3f}] | {se:.3f} | {pval:.2f} |")


if __name__ == "__main__":
    main()
