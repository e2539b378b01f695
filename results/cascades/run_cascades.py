"""Cascade evidence (issue 23): "masked child only" vs cascades, 3 seeds, child's and product's NE over all rows.

    nice -n 19 python results/cascades/run_cascades.py synthetic --out /tmp/cascades/synthetic
    nice -n 19 python results/cascades/run_cascades.py synthetic --data-seed 0 --out /tmp/cascades/synthetic_rare
    nice -n 19 python results/cascades/run_cascades.py kuairand --out /tmp/cascades/kuairand

Three variants share one model and one spec except the cascade options (the child declares `depends_on: parent`,
so every variant reports the same tasks, the derived product included):

- masked:  the child trains on parent-positive rows only (its own masked loss); the product's loss weight is 0,
           so it is p_parent * p_child read off two heads trained apart (the usual setup before ESMM);
- cascade: the child's masked loss and the product's loss over all rows (child_loss: true, product weight 1);
- esmm:    the product's loss only (child_loss: false: the child head learns through the product, as ESMM).

Metrics on the test split, exact: the product's NE/AUC over every row (its label, parent AND child, is defined on
every row); the child's NE/AUC over parent-positive rows (what its head predicts: p(child | parent)); and the
child's NE/AUC over ALL rows against the child's label there: synthetic data draws every post-click label before it
masks it (`post_click_all_labels`), KuaiRand labels long_view on every row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import yaml

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("masked", "cascade", "esmm")


def synthetic_data(out: Path, rows: int, seed: int) -> tuple[Path, Path, Path, dict]:
    """8 tasks (conversion is post-click), 4 days: 3 train, 1 test."""
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    data = out / "data"
    if _spec_file(data) is None:
        generate_synthetic(data, SynthConfig(tasks=8, rows=rows, days=4, seed=seed, table_scale=0.01,
                                             post_click_all_labels=True), overwrite=True)
    days = sorted(p for p in data.iterdir() if p.name.startswith("date="))
    for split, parts in (("train", days[:-1]), ("test", days[-1:])):
        if not (out / split).exists():
            for p in parts:
                shutil.copytree(p, out / split / p.name)
    setup = {"parent": "click", "child": "conversion", "all_label": "conversion_all",
             "config": str(REPO / "results" / "cascades" / "synthetic.yaml"), "set": []}
    return out / "train", out / "test", _spec_file(data), setup


def _spec_file(data: Path) -> Path | None:
    """The spec a data folder holds (`_feature_spec.yaml`, or `feature_spec.yaml` as older conversions wrote)."""
    return next((p for p in (data / "_feature_spec.yaml", data / "feature_spec.yaml") if p.exists()), None)


def kuairand_data(out: Path, src: Path) -> tuple[Path, Path, Path, dict]:
    from recsys_mtl.data.kuairand import convert_kuairand

    data = out / "data"
    if _spec_file(data) is None:
        convert_kuairand(src, data, overwrite=True)
    setup = {"parent": "is_click", "child": "long_view", "all_label": "long_view",
             "config": str(REPO / "configs" / "kuairand.yaml"),
             # the product stops with its parent and child (configs/kuairand.yaml stops both after 4 epochs)
             "set": ["train.task_epochs={is_click: 4, long_view: 4, is_forward: 4, is_profile_enter: 6, "
                     "is_click_long_view: 4}"],
             "static": [1, 1, 1, 1, 1, 3, 1]}
    return data / "train", data / "test", _spec_file(data), setup


def variant_spec(spec_path: Path, setup: dict, variant: str, out: Path) -> Path:
    spec = yaml.safe_load(spec_path.read_text())
    for t in spec["tasks"]:
        if t["name"] == setup["child"]:
            t["depends_on"] = setup["parent"]
            if variant == "esmm":
                t["child_loss"] = False
    path = out / f"spec_{variant}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def weighting(setup: dict, variant: str, num_heads: int) -> list[str]:
    base = setup.get("static", [1] * num_heads)
    weights = base + [0 if variant == "masked" else 1]
    return ["weighting.method=static", f"weighting.args={{weights: {weights}}}"]


def train(run: Path, train_dir: Path, spec: Path, setup: dict, variant: str, seed: int, num_heads: int) -> None:
    if (run / "checkpoints" / "latest").exists():
        return
    sets = [f"data.train_path={train_dir}", f"data.spec={spec}", f"train.output_dir={run}", f"train.seed={seed}",
            "data.eval_path=null", "tracking.enabled=false", *setup["set"], *weighting(setup, variant, num_heads)]
    cmd = [sys.executable, "-m", "recsys_mtl.cli", "train", setup["config"]] + [f"--set={s}" for s in sets]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{run}: training failed:\n{proc.stderr[-3000:]}")


def metrics_of(run: Path, test_dir: Path, setup: dict) -> dict:
    import torch

    from recsys_mtl.evaluate.loading import load_model
    from recsys_mtl.evaluate.scoring import score_eval_set
    from recsys_mtl.metrics.offline import task_metrics

    loaded = load_model(run / "checkpoints")
    spec = loaded.spec
    logits, labels, mask = score_eval_set(loaded.model, spec, test_dir, 4096)
    names = spec.task_names
    parent, child = names.index(setup["parent"]), names.index(setup["child"])
    product = names.index(f"{setup['parent']}_{setup['child']}")
    m = task_metrics(logits, labels, mask, from_logits=True)
    # the scored rows are the test files' rows in path order: read the child's label on every row in that order
    files = sorted(str(p) for p in test_dir.rglob("*.parquet"))
    table = pads.dataset(files, format="parquet").to_table(columns=[setup["parent"], setup["all_label"]])
    parent_col = table.column(setup["parent"]).to_numpy().astype(np.float32)
    if not np.array_equal(parent_col, labels[:, parent].numpy()):
        raise RuntimeError(f"{test_dir}: the scored rows are not in file order")
    all_label = torch.from_numpy(table.column(setup["all_label"]).to_numpy().astype(np.float32))
    child_all = task_metrics(logits[:, child:child + 1], all_label[:, None], None, from_logits=True)
    return {"product_ne": float(m.ne[product]), "product_auc": float(m.auc[product]),
            "child_ne_parent_rows": float(m.ne[child]), "child_auc_parent_rows": float(m.auc[child]),
            "child_ne_all_rows": float(child_all.ne[0]), "child_auc_all_rows": float(child_all.auc[0]),
            "child_calibration_all_rows": float(child_all.calibration[0]),
            "parent_ne": float(m.ne[parent]), "rows": int(labels.shape[0]),
            "parent_positive_rows": int(mask[:, child].sum()),
            "child_rate_all_rows": float(all_label.mean()), "child_rate_parent_rows": float(m.base_rate[child])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["synthetic", "kuairand"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", type=int, default=120_000, help="synthetic rows (4 days; the last is the test split)")
    p.add_argument("--data-seed", type=int, default=11, help="synthetic data's seed: it sets each task's base rate "
                   "(11: conversion 76%% of clicks; 0: 9%%)")
    p.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "kuairand")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dataset == "synthetic":
        train_dir, test_dir, spec_path, setup = synthetic_data(args.out, args.rows, args.data_seed)
    else:
        train_dir, test_dir, spec_path, setup = kuairand_data(args.out, args.src)
    num_heads = len(yaml.safe_load(spec_path.read_text())["tasks"])
    results: dict = {}
    for variant in VARIANTS:
        spec = variant_spec(spec_path, setup, variant, args.out)
        for seed in args.seeds:
            run = args.out / "runs" / variant / f"seed{seed}"
            train(run, train_dir, spec, setup, variant, seed, num_heads)
            results.setdefault(variant, {})[seed] = metrics_of(run, test_dir, setup)
            print(variant, seed, json.dumps(results[variant][seed]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    keys = ["product_ne", "product_auc", "child_ne_all_rows", "child_auc_all_rows", "child_calibration_all_rows",
            "child_ne_parent_rows", "child_auc_parent_rows", "parent_ne"]
    print("| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for variant, by_seed in results.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in by_seed.values()])
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
        print(f"| {variant} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
