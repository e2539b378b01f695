"""Per-task linear baseline for play_time_ms (issue 20, item 6): ridge regression of log1p(play_time_ms) on the
same one-hot columns as results/kuairand/paired_lr.py's logistic regressions (user and video ids, user
categoricals), fitted on the train days; test NMSE = MSE / label variance (1 = predicting the mean).

    python results/regression/ridge_play_time.py --data data/kuairand_valid_play_time   # choose C here
    python results/regression/ridge_play_time.py --data data/kuairand_play_time --C 1    # report on test

Only the ridge part of paired_lr.py (which also fits the seven logistic regressions), so it runs in seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.preprocessing import OneHotEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kuairand"))
from paired_lr import ONE_HOT, read_split  # noqa: E402

from recsys_mtl.data.kuairand import PLAY_TIME  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared data with play_time_ms (train/, test/)")
    ap.add_argument("--C", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0, 3.0, 10.0], help="ridge alpha = 1 / C")
    args = ap.parse_args()
    train, test = read_split(args.data, "train"), read_split(args.data, "test")
    enc = OneHotEncoder(handle_unknown="ignore").fit(train[ONE_HOT])
    x_train, x_test = enc.transform(train[ONE_HOT]), enc.transform(test[ONE_HOT])
    y_train = np.log1p(train[PLAY_TIME].to_numpy(dtype=float))
    y_test = np.log1p(test[PLAY_TIME].to_numpy(dtype=float))
    print(f"ridge regression of log1p({PLAY_TIME}) on {args.data}: {len(y_train)} train rows, {len(y_test)} test rows")
    print("| C | test NMSE |")
    print("| --- | --- |")
    for c in args.C:
        pred = Ridge(alpha=1.0 / c).fit(x_train, y_train).predict(x_test)
        print(f"| {c:g} | {np.mean((pred - y_test) ** 2) / np.var(y_test):.4f} |")


if __name__ == "__main__":
    main()
