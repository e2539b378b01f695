"""A tiny hand-made spec and Parquet writer for reader tests (row `i` carries dense `row` = i)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recsys_mtl.config.features import FeatureSpec

TINY_SPEC = {
    "name": "tiny",
    "tables": {
        "user": {"num_embeddings": 100, "embedding_dim": 4},
        "item": {"num_embeddings": 50, "embedding_dim": 4},
        "query": {"num_embeddings": 7, "embedding_dim": 4},
    },
    "sparse": [
        {"name": "user_id", "table": "user"},
        {"name": "item_id", "table": "item"},
        {"name": "hist_items", "table": "item", "multi_valued": True},
        {"name": "query", "table": "query", "hashed": True},
    ],
    "dense": [{"name": "row"}, {"name": "price", "transform": "log1p"}],
    "tasks": [{"name": "click"}, {"name": "buy", "label": "is_buy"}],
}


def tiny_spec(tmp: Path, **changes) -> tuple[FeatureSpec, Path]:
    data = {**TINY_SPEC, **changes}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return FeatureSpec.load(path), path


def tiny_table(start: int, n: int, seed: int = 0, **override) -> pa.Table:
    rng = np.random.default_rng([seed, start])
    rows = np.arange(start, start + n)
    lengths = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    buy_null = rng.random(n) < 0.4
    cols = {
        "user_id": pa.array(rows % 100, pa.int64()),
        "item_id": pa.array(rng.integers(0, 50, n), pa.int64()),
        "hist_items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 50, offsets[-1]), pa.int64())),
        "query": pa.array(rng.integers(-(2**40), 2**40, n), pa.int64()),
        "row": pa.array(rows.astype(np.float32)),
        "price": pa.array(rng.random(n).astype(np.float32) * 100),
        "click": pa.array(rng.integers(0, 2, n).astype(np.int8)),
        "is_buy": pa.array(rng.integers(0, 2, n).astype(np.int8), mask=buy_null),
    }
    cols.update(override)
    return pa.table(cols)


def write_tiny(folder: Path, files: int = 3, rows_per_file: int = 1000, row_group: int = 250, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        table = tiny_table(f * rows_per_file, rows_per_file, seed)
        pq.write_table(table, folder / f"part-{f}.parquet", row_group_size=row_group)
    return folder
