"""Grouped AUC (GAUC): each group's AUC (e.g. per user), averaged with impression weights, exactly.

    GAUC_t = sum_g n_gt AUC_gt / sum_g n_gt,   over groups g whose labelled rows of task t hold both classes,

n_gt = the group's labelled rows of task t (its impressions; with sample weights, their sum), AUC_gt the exact
tie-aware Mann-Whitney AUC of the group's rows (tied scores count 1/2, sample weights weigh pairs). A group with one
class has no AUC and is skipped (its rows count nowhere); a task with no such group gets NaN. Regression tasks get
NaN.

Memory: exact GAUC sorts every labelled (task, row) by (task, group, score): it keeps the group id, the score and
the label of each labelled row, 8 + 4 + 4 = 16 bytes per row and task (int64 group, float32 score, float32 label),
plus the sort's index (8 bytes). Unlike NE or a histogram AUC it has no fixed-size sufficient statistic: the
per-group rank sums need every score of the group. A bounded-memory variant would keep a per-group score histogram
(groups x bins), which is exact only up to ties within a bin. `GroupedScores` keeps those rows while a streaming
evaluation runs (8 + T * (4 * models + 1) bytes per row) and gathers them from every process.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class GroupedAUC:
    gauc: np.ndarray  # [T] NaN where no group has both classes (or the task is a regression task)
    groups: np.ndarray  # [T] groups with both classes (those averaged)
    rows: np.ndarray  # [T] labelled rows in those groups (the weight of the average without sample weights)


def _numpy(x, name: str, dtype=None) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 1 and name != "groups":
        a = a[:, None]
    return a if dtype is None else a.astype(dtype, copy=False)


def grouped_auc(scores, labels, mask=None, groups=None, weights=None, *, task_types=None) -> GroupedAUC:
    """`scores`, `labels`, `mask` [N, T] (scores: any monotone score, e.g. logits; labels 0/1 where mask is True),
    `groups` [N] integer group ids (e.g. user ids), `weights` optional [N] or [N, T] sample weights."""
    s = _numpy(scores, "scores", np.float64)
    y = _numpy(labels, "labels", np.float64)
    N, T = y.shape
    m = np.ones((N, T), dtype=bool) if mask is None else _numpy(mask, "mask", bool)
    if groups is None:
        raise ValueError("grouped_auc: groups (one id per row) are required")
    g = _numpy(groups, "groups")
    if s.shape != (N, T) or m.shape != (N, T) or g.shape != (N,):
        raise ValueError(f"grouped_auc: scores {s.shape}, labels {y.shape}, mask {m.shape} must be [N, T] and groups "
                         f"{g.shape} [N]")
    if not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"grouped_auc: groups must be integer ids, got {g.dtype}")
    if task_types is not None:
        m = m & np.array([t != "regression" for t in task_types], dtype=bool)[None, :]
    w = np.ones((N, T)) if weights is None else np.broadcast_to(_numpy(weights, "weights", np.float64), (N, T))
    rows, task = np.nonzero(m)  # labelled (row, task) elements, flattened
    if len(rows) and np.any((y[rows, task] != 0) & (y[rows, task] != 1)):
        raise ValueError("grouped_auc: labels must be 0 or 1 wherever mask is True")
    order = np.lexsort((s[rows, task], g[rows], task))  # by task, then group, then score
    rows, task = rows[order], task[order]
    grp, sc, lab, wt = g[rows], s[rows, task], y[rows, task], w[rows, task]
    n = len(rows)
    new_segment = np.ones(n, dtype=bool)  # a (task, group) segment
    new_segment[1:] = (task[1:] != task[:-1]) | (grp[1:] != grp[:-1])
    new_tie = new_segment.copy()  # a run of equal scores inside a segment
    new_tie[1:] |= sc[1:] != sc[:-1]
    seg = np.cumsum(new_segment) - 1
    tie = np.cumsum(new_tie) - 1
    n_seg, n_tie = (int(seg[-1]) + 1, int(tie[-1]) + 1) if n else (0, 0)
    pos_w, neg_w = wt * lab, wt * (1 - lab)
    tie_pos = np.bincount(tie, pos_w, n_tie)
    tie_neg = np.bincount(tie, neg_w, n_tie)
    seg_of_tie = seg[new_tie]
    neg_before = np.cumsum(tie_neg) - tie_neg  # negatives in earlier ties, counted from the task's start
    first_tie_of_seg = np.flatnonzero(np.r_[True, seg_of_tie[1:] != seg_of_tie[:-1]]) if n_tie else np.zeros(0, int)
    neg_before -= neg_before[first_tie_of_seg][seg_of_tie]  # ... from the segment's start
    numer = np.bincount(seg_of_tie, tie_pos * (neg_before + 0.5 * tie_neg), n_seg)
    P = np.bincount(seg, pos_w, n_seg)
    Nn = np.bincount(seg, neg_w, n_seg)
    both = (P > 0) & (Nn > 0)
    auc = np.where(both, numer / np.where(both, P * Nn, 1.0), 0.0)
    impressions = np.bincount(seg, wt, n_seg)  # the group's labelled rows (or their weights)
    seg_task = task[new_segment]
    total = np.bincount(seg_task, impressions * both, T)
    gauc = np.where(total > 0, np.bincount(seg_task, impressions * both * auc, T) / np.where(total > 0, total, 1), np.nan)
    return GroupedAUC(gauc=gauc, groups=np.bincount(seg_task, both, T).astype(np.int64),
                      rows=np.bincount(seg_task, np.bincount(seg, None, n_seg) * both, T).astype(np.int64))



class GroupedScores:
    """The rows exact GAUC needs, kept while a streaming evaluation goes (`update` per batch), for one or more
    models scored on the same rows: per labelled-anywhere row its group id (int64) and, per task, the score of each
    model (float32), the label (int8, -1 = unlabelled). That is 8 + T * (4 * models + 1) bytes per row: GAUC has no
    fixed-size statistic (a group's rank sum needs all its scores). Processes' rows are gathered to rank 0
    (`gather_`) before `gauc`."""

    def __init__(self, n_models: int = 1, task_types=None) -> None:
        self.n_models = n_models
        self.task_types = task_types  # regression tasks' rows are not kept (no GAUC)
        self._groups: list[np.ndarray] = []
        self._scores: list[list[np.ndarray]] = [[] for _ in range(n_models)]
        self._labels: list[np.ndarray] = []

    def update(self, groups, logits, labels: torch.Tensor, mask: torch.Tensor) -> None:
        """`groups` [B] ids; `logits` [B, T] or a sequence of one [B, T] per model; `labels`, `mask` [B, T]."""
        logits = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        if len(logits) != self.n_models:
            raise ValueError(f"GroupedScores.update: {len(logits)} models' logits, expected {self.n_models}")
        m = mask.detach().cpu().numpy().astype(bool)
        if self.task_types is not None:
            m = m & np.array([t != "regression" for t in self.task_types], dtype=bool)[None, :]
        keep = m.any(axis=1)  # rows with no label for any task add nothing
        self._groups.append(_numpy(groups, "groups", np.int64)[keep])
        for k, x in enumerate(logits):
            self._scores[k].append(x.detach().float().cpu().numpy()[keep])
        y = labels.detach().cpu().numpy()
        self._labels.append(np.where(m, y, -1).astype(np.int8)[keep])

    def _arrays(self) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        if not self._groups:
            raise ValueError("GroupedScores: no rows")
        return (np.concatenate(self._groups), [np.concatenate(s) for s in self._scores],
                np.concatenate(self._labels))

    def gather_(self, group=None) -> "GroupedScores":
        """Every process's rows on rank 0 (the others keep theirs); a collective, called on every rank."""
        import torch.distributed as dist

        local = self._arrays() if self._groups else None
        parts: list | None = [None] * dist.get_world_size(group) if dist.get_rank(group) == 0 else None
        dist.gather_object(local, parts, dst=0, group=group)
        if parts is not None:
            parts = [p for p in parts if p is not None]
            self._groups = [p[0] for p in parts]
            self._scores = [[p[1][k] for p in parts] for k in range(self.n_models)]
            self._labels = [p[2] for p in parts]
        return self

    def gauc(self, model: int = 0) -> GroupedAUC:
        groups, scores, labels = self._arrays()
        mask = labels >= 0
        return grouped_auc(scores[model], np.where(mask, labels, 0), mask, groups, task_types=self.task_types)

    def bytes(self) -> int:
        return sum(a.nbytes for a in self._groups + self._labels) + sum(a.nbytes for s in self._scores for a in s)


__all__ = ["GroupedAUC", "grouped_auc", "GroupedScores"]
