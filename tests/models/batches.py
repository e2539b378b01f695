"""Small random specs, batches and an in-memory BatchSource for model and train tests."""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.config.loader import from_dict
from recsys_mtl.data.batch import Batch


def tiny_spec(num_tasks: int = 6, num_dense: int = 3, rows: tuple[int, int] = (40, 30),
              regression: dict[int, dict] | None = None) -> FeatureSpec:
    """Two tables; `item` is shared by a single-valued and a multi-valued feature. `regression`: task index ->
    its regression settings (e.g. {"loss": "huber"}); those tasks are regression tasks."""
    regression = regression or {}
    return from_dict(
        FeatureSpec,
        {
            "name": "tiny",
            "tables": {
                "user": {"num_embeddings": rows[0], "embedding_dim": 8},
                "item": {"num_embeddings": rows[1], "embedding_dim": 8},
            },
            "sparse": [
                {"name": "user_id", "table": "user"},
                {"name": "item_id", "table": "item"},
                {"name": "hist_items", "table": "item", "multi_valued": True},
            ],
            "dense": [{"name": f"d{i}"} for i in range(num_dense)],
            "tasks": [{"name": f"task{i}", **({"type": "regression", **regression[i]} if i in regression else {})}
                      for i in range(num_tasks)],
        },
        "tiny_spec",
    )


def random_batch(spec: FeatureSpec, batch_size: int, seed: int = 0, label_rate: float = 0.7,
                 absent_tasks: tuple[int, ...] = ()) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for f in spec.sparse:
        size = spec.tables[f.table].num_embeddings
        lens = torch.randint(0, 4, (batch_size,), generator=g) if f.multi_valued else torch.ones(batch_size, dtype=torch.long)
        lengths.append(lens)
        values.append(torch.randint(0, size, (int(lens.sum()),), generator=g))
    sparse = KeyedJaggedTensor(keys=spec.sparse_names, values=torch.cat(values), lengths=torch.cat(lengths))
    t = spec.num_tasks
    mask = torch.rand(batch_size, t, generator=g) < label_rate
    for a in absent_tasks:
        mask[:, a] = False
    labels = ((torch.rand(batch_size, t, generator=g) < 0.4) & mask).float()
    regression = torch.tensor([task.is_regression for task in spec.tasks])
    if regression.any():  # log1p of a log-normal watch time: around 3, heavy upper tail
        targets = torch.log1p(torch.exp(2.5 + 1.0 * torch.randn(batch_size, t, generator=g)))
        labels = torch.where(regression & mask, targets, labels)
    return Batch(dense=torch.randn(batch_size, spec.num_dense, generator=g), sparse=sparse, labels=labels,
                 label_mask=mask)


def concat_batches(parts: list[Batch]) -> Batch:
    """Rows of `parts` one after another (the single-process view of per-rank batches)."""
    keys = parts[0].sparse.keys()
    dicts = [p.sparse.to_dict() for p in parts]
    lengths = torch.cat([torch.cat([d[k].lengths() for d in dicts]) for k in keys])
    values = torch.cat([torch.cat([d[k].values() for d in dicts]) for k in keys])
    return Batch(
        dense=torch.cat([p.dense for p in parts]),
        sparse=KeyedJaggedTensor(keys=keys, values=values, lengths=lengths),
        labels=torch.cat([p.labels for p in parts]),
        label_mask=torch.cat([p.label_mask for p in parts]),
    )


class ListSource:
    """An in-memory BatchSource: the same batches every epoch, resumable by (epoch, offset)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.epoch = 0
        self.offset = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.offset = epoch, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        start = self.offset
        for i in range(start, len(self.batches)):
            self.offset = i + 1
            yield self.batches[i]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]

    def position_after(self, num_batches_consumed: int) -> dict:
        return {"epoch": self.epoch, "offset": num_batches_consumed}


def rank_batches(spec: FeatureSpec, steps: int, per_rank: int, world_size: int, rank: int | None,
                 seed: int = 0) -> list[Batch]:
    """Step s's global batch is rows of (s, r) for r in ranks; rank=None gives the whole global batch."""
    out = []
    for s in range(steps):
        parts = [random_batch(spec, per_rank, seed=seed * 100_003 + s * 101 + r, absent_tasks=(5,) if s % 3 == 0 else ())
                 for r in range(world_size)]
        out.append(concat_batches(parts) if rank is None else parts[rank])
    return out
