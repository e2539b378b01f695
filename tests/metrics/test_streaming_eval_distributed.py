"""The trainer's evaluation statistics in two real gloo processes equal one process's (nothing gathered row by row)."""

from __future__ import annotations

import datetime
import json
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.models.batches import ListSource, random_batch, tiny_spec

BATCH = 32
# rank 0 holds 3 batches, rank 1 two and a short one: the ranks run different numbers of forward passes
RANK_BATCHES = {0: [(0, BATCH), (1, BATCH), (2, BATCH)], 1: [(3, BATCH), (4, BATCH), (5, 11)]}


def _model_and_spec():
    from recsys_mtl.config.train import ModelConfig
    from recsys_mtl.models import MultiTaskModel

    spec = tiny_spec()
    torch.manual_seed(0)  # the tables' random init: the same model in every process
    model = MultiTaskModel(spec, ModelConfig(), seed=0, device="cpu", embedding_device="cpu").eval()
    return model, spec


def _metrics(world_size: int, rank: int) -> dict:
    from recsys_mtl.train.evaluation import eval_statistics, metrics_by_task

    model, spec = _model_and_spec()
    parts = RANK_BATCHES[rank] if world_size > 1 else RANK_BATCHES[0] + RANK_BATCHES[1]
    batches = ListSource([random_batch(spec, n, seed=seed) for seed, n in parts])
    stats = eval_statistics(model, batches, spec, BATCH, torch.device("cpu"), world_size)
    return metrics_by_task(stats, spec.task_names)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        metrics = _metrics(2, rank)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(metrics, f)


def test_two_process_evaluation_equals_one_process_and_the_exact_metrics(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0 == r1  # every rank holds the same totals (they go into its checkpoint)
    one = _metrics(1, 0)
    assert one.keys() == r0.keys()
    for task in one:
        for key in ("auc", "ne", "logloss", "calibration", "count"):
            np.testing.assert_allclose(r0[task][key], one[task][key], rtol=1e-6, err_msg=f"{task} {key}")
    # and the streaming statistics agree with the exact in-memory metrics of the same rows
    from recsys_mtl.metrics.offline import task_metrics

    model, spec = _model_and_spec()
    rows = [random_batch(spec, n, seed=seed) for seed, n in RANK_BATCHES[0] + RANK_BATCHES[1]]
    with torch.no_grad():
        logits = torch.cat([model(b.dense, b.sparse) for b in rows])
    exact = task_metrics(logits, torch.cat([b.labels for b in rows]), torch.cat([b.label_mask for b in rows]),
                         from_logits=True)
    np.testing.assert_allclose([one[t]["ne"] for t in spec.task_names], exact.ne, rtol=1e-5)
    np.testing.assert_allclose([one[t]["calibration"] for t in spec.task_names], exact.calibration, rtol=1e-5)
    # (AUC vs exact is tested on realistic scores in test_streaming_eval.py: this untrained model's logits of a
    # task span 0.02, about 9 histogram bins)
