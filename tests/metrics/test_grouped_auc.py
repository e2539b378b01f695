"""GAUC against a direct per-group computation: every pair of each group, counted one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_mtl.metrics.grouped import grouped_auc


def direct_gauc(scores, labels, mask, groups, weights=None):
    """Per task: for each group with both classes, AUC = sum over (pos, neg) pairs of w_p w_n [s_p > s_n] (1/2 on a
    tie) / (sum w_p)(sum w_n); averaged with the group's labelled rows (or their weight sum)."""
    N, T = labels.shape
    w = np.ones((N, T)) if weights is None else np.broadcast_to(weights.reshape(N, -1), (N, T))
    out = []
    for t in range(T):
        num = den = 0.0
        for g in np.unique(groups):
            rows = np.flatnonzero((groups == g) & mask[:, t])
            pos, neg = rows[labels[rows, t] == 1], rows[labels[rows, t] == 0]
            if len(pos) == 0 or len(neg) == 0:
                continue
            pairs = 0.0
            for p in pos:
                for n in neg:
                    pairs += w[p, t] * w[n, t] * (1.0 if scores[p, t] > scores[n, t] else 0.5 if scores[p, t] == scores[n, t] else 0.0)
            auc = pairs / (w[pos, t].sum() * w[neg, t].sum())
            num += w[rows, t].sum() * auc
            den += w[rows, t].sum()
        out.append(num / den if den else np.nan)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_gauc_equals_a_direct_per_group_computation_with_ties_masks_and_single_class_groups(seed, weighted):
    rng = np.random.default_rng(seed)
    N, T = 400, 3
    groups = rng.integers(0, 25, N) * 1000 + 7  # sparse, unordered ids
    scores = np.round(rng.standard_normal((N, T)), 1)  # rounding makes ties
    labels = (rng.random((N, T)) < [[0.3, 0.05, 0.5]]).astype(np.float64)
    mask = rng.random((N, T)) < 0.8
    labels[groups == 7, 0] = 1  # a group with one class in task 0: skipped
    weights = rng.uniform(0.5, 2.0, N) if weighted else None
    got = grouped_auc(torch.tensor(scores), torch.tensor(labels), torch.tensor(mask), torch.tensor(groups), weights)
    np.testing.assert_allclose(got.gauc, direct_gauc(scores, labels, mask, groups, weights), rtol=1e-12)
    assert got.groups[0] <= 24 and (got.rows <= mask.sum(0)).all()


def test_one_group_is_the_plain_auc_and_a_task_without_two_class_groups_is_nan():
    from recsys_mtl.metrics.offline import offline_auc

    rng = np.random.default_rng(5)
    scores, labels = rng.standard_normal((300, 2)), (rng.random((300, 2)) < 0.3).astype(float)
    labels[::2, 1] = 1
    labels[1::2, 1] = 0
    groups = np.zeros(300, dtype=np.int64)
    got = grouped_auc(scores, labels, None, groups)
    np.testing.assert_allclose(got.gauc, offline_auc(torch.sigmoid(torch.tensor(scores)), torch.tensor(labels)))
    per_row = grouped_auc(scores, labels, None, np.arange(300))  # every group one row: one class each
    assert np.isnan(per_row.gauc).all() and (per_row.groups == 0).all()


def test_a_regression_task_has_no_gauc():
    got = grouped_auc(np.zeros((4, 2)), np.array([[0, 3.5], [1, 2.0], [0, 1.0], [1, 0.5]]), None,
                      np.zeros(4, dtype=np.int64), task_types=["binary", "regression"])
    assert got.gauc[0] == 0.5 and np.isnan(got.gauc[1])


def _gather_worker(rank: int, init_file: str, out_dir: str) -> None:
    import datetime
    import os

    import torch.distributed as dist

    from recsys_mtl.metrics.grouped import GroupedScores

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        groups, scores, labels, mask = _rows()
        mine = slice(0, 130) if rank == 0 else slice(130, None)
        collector = GroupedScores(n_models=2, task_types=["binary", "binary", "regression"])
        for start in range(mine.start or 0, mine.stop or len(groups), 50):  # batches, as a stream gives them
            rows = slice(start, min(start + 50, mine.stop or len(groups)))
            collector.update(torch.tensor(groups[rows]), [torch.tensor(scores[rows]), -torch.tensor(scores[rows])],
                             torch.tensor(labels[rows]), torch.tensor(mask[rows]))
        collector.gather_()
        if rank == 0:
            np.save(os.path.join(out_dir, "gauc.npy"), np.stack([collector.gauc(0).gauc, collector.gauc(1).gauc]))
    finally:
        dist.destroy_process_group()


def _rows():
    rng = np.random.default_rng(11)
    N = 300
    groups = rng.integers(0, 30, N)
    scores = rng.standard_normal((N, 3)).astype(np.float32)
    labels = (rng.random((N, 3)) < 0.4).astype(np.float32)
    labels[:, 2] = rng.random(N) * 5  # a regression task: no GAUC
    mask = rng.random((N, 3)) < 0.7
    return groups, scores, labels, mask


def test_streamed_rows_gathered_from_two_processes_give_the_gauc_of_all_rows(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    groups, scores, labels, mask = _rows()
    got = np.load(tmp_path / "gauc.npy")
    binary = labels.copy()
    binary[:, 2] = 0
    want = direct_gauc(scores[:, :2].astype(np.float64), binary[:, :2], mask[:, :2], groups)
    np.testing.assert_allclose(got[0, :2], want, rtol=1e-12)
    np.testing.assert_allclose(got[1, :2], 1 - want, rtol=1e-12)  # the negated scores: the other model
    assert np.isnan(got[:, 2]).all()
