"""Sharding-independent embedding initialisation.

Each value is a hash of (seed, table, global row, global column), so a table
gets the same numbers whether it lives whole on one rank or in row/column
shards on many: a 2-process run starts exactly where a 1-process run does.
Values are uniform in +-sqrt(1/num_embeddings), TorchRec's default range.
"""

from __future__ import annotations

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

_C1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 multipliers as signed int64
_C2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_CHUNK_ROWS = 1 << 16


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shr(x, 30)
    x = x * _C1
    x = x ^ _shr(x, 27)
    x = x * _C2
    return x ^ _shr(x, 31)


def hashed_uniform(seed: int, table: int, rows: torch.Tensor, cols: torch.Tensor, bound: float) -> torch.Tensor:
    """[len(rows), len(cols)] float32 values in [-bound, bound), a pure function of the indices."""
    key = _splitmix(torch.tensor(seed * 1_000_003 + table, dtype=torch.int64, device=rows.device) * _GOLDEN)
    x = key + rows.to(torch.int64).view(-1, 1) * 0x100000001 + cols.to(torch.int64).view(1, -1) * _GOLDEN
    bits = _shr(_splitmix(x), 40)  # top 24 bits
    return (bits.to(torch.float32) / float(1 << 24) * 2.0 - 1.0) * bound


@torch.no_grad()
def fill_table_(weight: torch.Tensor, seed: int, table: int, num_embeddings: int,
                row_offset: int = 0, col_offset: int = 0, zero_from_col: int | None = None) -> None:
    """Write the table's values for the block starting at (row_offset, col_offset) into `weight`.

    Columns >= zero_from_col (the wide per-task weights) start at 0, like a logistic regression.
    """
    bound = (1.0 / num_embeddings) ** 0.5
    rows, dim = weight.shape
    device = weight.device  # hashed where the table lives: 13 GB of GPU tables take seconds, not minutes
    cols = torch.arange(col_offset, col_offset + dim, device=device)
    keep = None if zero_from_col is None else (cols < zero_from_col).to(torch.float32)
    for start in range(0, rows, _CHUNK_ROWS):
        stop = min(rows, start + _CHUNK_ROWS)
        values = hashed_uniform(seed, table, torch.arange(row_offset + start, row_offset + stop, device=device), cols,
                                bound)
        if keep is not None:
            values = values * keep
        weight[start:stop].copy_(values.to(weight.dtype))


@torch.no_grad()
def init_embedding_state_(state: dict[str, torch.Tensor], table_keys: dict[str, tuple[int, int, int | None]],
                          seed: int) -> None:
    """Fill each table's local part in a (possibly sharded) state_dict in place.

    table_keys: state_dict key -> (table index, num_embeddings, first zero column or None).
    Works on plain tensors (unsharded or data-parallel) and ShardedTensor shards.
    """
    for key, (index, num_embeddings, zero_from) in table_keys.items():
        value = state[key]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                r, c = shard.metadata.shard_offsets
                fill_table_(shard.tensor, seed, index, num_embeddings, r, c, zero_from)
        elif hasattr(value, "to_local") and hasattr(value, "device_mesh"):  # DTensor
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            local = value.to_local()
            _, offset = compute_local_shape_and_global_offset(value.shape, value.device_mesh, value.placements)
            fill_table_(local, seed, index, num_embeddings, int(offset[0]), int(offset[1]), zero_from)
        else:
            fill_table_(value, seed, index, num_embeddings, zero_from_col=zero_from)
