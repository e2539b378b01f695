"""The one place that turns Arrow into tensors.

A row group is converted once into `Columns` (numpy arrays, zero-copy where
Arrow allows: non-null integer and float columns), validated with vectorised
Arrow kernels, then cut into batches by slicing. `Columns.to_batch()` builds
the torch tensors and the KeyedJaggedTensor. No per-row Python anywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.config.features import FeatureSpec, TaskSpec
from recsys_mtl.data.batch import Batch
from recsys_mtl.data.errors import DataError


@dataclasses.dataclass
class Columns:
    """A run of rows as numpy arrays.

    ids[f]:      int64 ids of sparse feature f (flattened values for multi-valued features)
    offsets[f]:  None for single-valued features, else int64 [n+1] offsets into ids[f]
                 (absolute: ids[f][offsets[0]:offsets[-1]] are this run's values)
    dense:       float32 [n, D], already transformed
    labels:      int8 [n, T], -1 where unlabelled (a regression task's column: 0 where labelled)
    weights:     float32 [n, T] or None
    targets:     float32 [n, R] or None: the R regression tasks' labels, clipped and transformed (0 where
                 unlabelled); binary-only specs keep int8 labels alone, a quarter of float labels' memory
    """

    n: int
    ids: list[np.ndarray]
    offsets: list[np.ndarray | None]
    dense: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    targets: np.ndarray | None = None
    regression_index: np.ndarray | None = None  # int64 [R]: the task column of each target column

    def slice(self, start: int, stop: int) -> "Columns":
        """Rows [start, stop) as views (no copy)."""
        ids, offsets = [], []
        for values, off in zip(self.ids, self.offsets):
            if off is None:
                ids.append(values[start:stop])
                offsets.append(None)
            else:
                ids.append(values)
                offsets.append(off[start : stop + 1])
        return Columns(
            n=stop - start,
            ids=ids,
            offsets=offsets,
            dense=self.dense[start:stop],
            labels=self.labels[start:stop],
            weights=None if self.weights is None else self.weights[start:stop],
            targets=None if self.targets is None else self.targets[start:stop],
            regression_index=self.regression_index,
        )

    def _jagged(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, lengths) of multi-valued feature f for exactly this run's rows."""
        off = self.offsets[f]
        return self.ids[f][off[0] : off[-1]], np.diff(off)

    def take(self, index: np.ndarray) -> "Columns":
        """Rows in the order of `index` (a copy), jagged features included."""
        ids, offsets = [], []
        for f, off in enumerate(self.offsets):
            if off is None:
                ids.append(self.ids[f][index])
                offsets.append(None)
                continue
            values, lengths = self._jagged(f)
            starts = off[:-1] - off[0]
            new_len = lengths[index]
            new_off = np.zeros(len(index) + 1, dtype=np.int64)
            np.cumsum(new_len, out=new_off[1:])
            # gather position of each output value: start of its source row + position within row
            src = np.repeat(starts[index] - new_off[:-1], new_len) + np.arange(new_off[-1], dtype=np.int64)
            ids.append(values[src])
            offsets.append(new_off)
        return Columns(
            n=len(index),
            ids=ids,
            offsets=offsets,
            dense=self.dense[index],
            labels=self.labels[index],
            weights=None if self.weights is None else self.weights[index],
            targets=None if self.targets is None else self.targets[index],
            regression_index=self.regression_index,
        )

    @staticmethod
    def concat(parts: list["Columns"]) -> "Columns":
        if len(parts) == 1:
            return parts[0]
        ids, offsets = [], []
        for f, off in enumerate(parts[0].offsets):
            if off is None:
                ids.append(np.concatenate([p.ids[f] for p in parts]))
                offsets.append(None)
                continue
            vals, lens = zip(*(p._jagged(f) for p in parts))
            lengths = np.concatenate(lens)
            new_off = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=new_off[1:])
            ids.append(np.concatenate(vals))
            offsets.append(new_off)
        weights = None if parts[0].weights is None else np.concatenate([p.weights for p in parts])
        targets = None if parts[0].targets is None else np.concatenate([p.targets for p in parts])
        return Columns(
            n=sum(p.n for p in parts),
            ids=ids,
            offsets=offsets,
            dense=np.concatenate([p.dense for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            weights=weights,
            targets=targets,
            regression_index=parts[0].regression_index,
        )

    def to_batch(self, keys: list[str]) -> Batch:
        """Tensors for this run. numpy does the little arithmetic (torch's intra-op thread pool
        costs more than the work on arrays this small); torch wraps the results without copies."""
        n = self.n
        jagged = [None if off is None else self._jagged(f) for f, off in enumerate(self.offsets)]
        total = sum(n if j is None else len(j[0]) for j in jagged)
        values = np.empty(total, dtype=np.int64)
        lengths = np.empty(n * len(self.ids), dtype=np.int32)
        pos = 0
        for f, j in enumerate(jagged):
            if j is None:
                values[pos : pos + n] = self.ids[f]
                lengths[f * n : (f + 1) * n] = 1
                pos += n
            else:
                values[pos : pos + len(j[0])] = j[0]
                lengths[f * n : (f + 1) * n] = j[1]
                pos += len(j[0])
        sparse = KeyedJaggedTensor(keys=keys, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths))
        labels = np.maximum(self.labels, 0).astype(np.float32)
        if self.targets is not None:
            labels[:, self.regression_index] = self.targets
        return Batch(
            dense=torch.from_numpy(np.ascontiguousarray(self.dense)),
            sparse=sparse,
            labels=torch.from_numpy(labels),
            label_mask=torch.from_numpy(self.labels >= 0),
            sample_weights=None if self.weights is None else torch.from_numpy(np.ascontiguousarray(self.weights)),
        )


def _min_max(arr: pa.Array) -> tuple[int | None, int | None]:
    mm = pc.min_max(arr)
    return mm["min"].as_py(), mm["max"].as_py()


def _array(col: pa.ChunkedArray) -> pa.Array:
    """One array for a column; `combine_chunks()` copies even a single chunk, so avoid it."""
    return col.chunks[0] if col.num_chunks == 1 else col.combine_chunks()


def _int64(arr: pa.Array) -> np.ndarray:
    if arr.type != pa.int64():
        arr = arr.cast(pa.int64())
    return arr.to_numpy(zero_copy_only=True)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def is_string_ids(t: pa.DataType) -> bool:
    """A string or binary id column type (plain, large or dictionary-encoded)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def string_hashes(arr: pa.Array) -> np.ndarray:
    """uint64 hash of each value's bytes (UTF-8 for strings): 64-bit FNV-1a, then the splitmix64 finaliser, which
    spreads FNV's weak low bits before a modulo. The same value gets the same hash in every process, machine and
    release (no per-process seed, unlike Python's hash). Vectorised over values, one pass per byte position."""
    arr = arr.cast(pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: the values still going at byte j are a prefix
    starts, sorted_lengths = offsets[:-1][order], lengths[order]
    h = np.full(len(arr), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(sorted_lengths[0]) if len(arr) else 0):
            live = int(np.searchsorted(-sorted_lengths, -j, side="left"))  # values longer than j
            h[:live] = (h[:live] ^ data[starts[:live] + j].astype(np.uint64)) * _FNV_PRIME
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    out = np.empty_like(h)
    out[order] = h
    return out


def _hashed_strings(arr: pa.Array, size: int) -> np.ndarray:
    """Table rows of string ids. A dictionary array (how the reader gets a single-valued string column from
    Parquet) hashes each distinct value once; a plain one (list items) hashes each value, vectorised (measured:
    encoding a dictionary first costs more than hashing short ids)."""
    if not pa.types.is_dictionary(arr.type):
        return (string_hashes(arr) % np.uint64(size)).astype(np.int64)
    rows = (string_hashes(arr.dictionary) % np.uint64(size)).astype(np.int64)
    return rows[pc.fill_null(arr.indices, 0).to_numpy(zero_copy_only=False)]


def _hashed(arr: pa.Array, size: int) -> np.ndarray:
    """Ids modulo `size` as int64, non-negative; unsigned ids are reduced before the cast (uint64 >= 2**63 does
    not fit an int64); string ids are hashed first (string_hashes)."""
    if is_string_ids(arr.type):
        return _hashed_strings(arr, size)
    if pa.types.is_unsigned_integer(arr.type):
        return np.remainder(arr.to_numpy(zero_copy_only=True), np.uint64(size)).astype(np.int64)
    return np.remainder(_int64(arr), size)


def binary_labels(col: pa.Array, task: TaskSpec, where: str) -> np.ndarray:
    """int8 [n]: 0/1, -1 where unlabelled (null, or NaN in a float column as pandas writes missing values)."""
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    if pa.types.is_floating(col.type):
        x = col.to_numpy(zero_copy_only=False)  # nulls come out as NaN
        bad = ~np.isnan(x) & (x != 0) & (x != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}: column {task.source!r} (label of task {task.name!r}) has value {x[row]} at row "
                            f"{row}; expected binary labels 0/1 (null = unlabelled), or type: regression for a numeric "
                            "target")
        return np.where(np.isnan(x), -1, x).astype(np.int8)
    if len(col) and col.null_count < len(col):
        lo, hi = _min_max(col)
        if lo < 0 or hi > 1:
            bad = lo if lo < 0 else hi
            row = int(np.flatnonzero(pc.fill_null(pc.equal(col, bad), False).to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{where}: column {task.source!r} (label of task {task.name!r}) has value {bad} at row {row}; "
                "expected binary labels 0/1 (null = unlabelled)"
            )
    # to int8 before the fill: an unsigned column cannot hold -1 (values are 0/1 here)
    return pc.fill_null(col.cast(pa.int8()), -1).to_numpy(zero_copy_only=False)


def regression_labels(col: pa.Array, task: TaskSpec, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n] clipped and transformed label, 0 where unlabelled; bool [n] labelled). Null or NaN = unlabelled;
    an infinite label, or a negative one under log1p (after the clip), is an error naming the row."""
    x = col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls come out as NaN
    labelled = ~np.isnan(x)
    if np.isinf(x).any():
        row = int(np.flatnonzero(np.isinf(x))[0])
        raise DataError(f"{where}: column {task.source!r} (label of regression task {task.name!r}) has {x[row]} at row "
                        f"{row}; expected finite numbers (null or NaN = unlabelled)")
    x = np.where(labelled, x, 0.0)
    if task.clip is not None:
        x = np.clip(x, task.clip[0], task.clip[1])
    if task.transform == "log1p":
        if (x < 0).any():
            row = int(np.flatnonzero(x < 0)[0])
            raise DataError(f"{where}: column {task.source!r} (label of regression task {task.name!r}) has {x[row]} at "
                            f"row {row}; transform log1p expects labels >= 0 (or a clip with low >= 0)")
        x = np.log1p(x)
    return np.where(labelled, x, 0.0).astype(np.float32), labelled


def cascade_label_plan(spec: FeatureSpec) -> np.ndarray | None:
    """int64 [D, 3] for `cascade_labels_` (None without cascades): per derived task, (derived, chain, child) columns,
    the chain being the parent's product when the parent is itself a child, else the parent; shallow chains first,
    so a product reads its parent's finished product."""
    if not spec.has_cascades:
        return None
    index = {t.name: j for j, t in enumerate(spec.tasks)}
    by_name = {t.name: t for t in spec.tasks}
    product_of_child = {t.product_of[1]: index[t.name] for t in spec.tasks if t.is_derived}
    depth = {name: len(chain) for name, chain in spec.cascade_paths().items()}
    plan = []
    for t in sorted((t for t in spec.tasks if t.is_derived), key=lambda t: depth[t.name]):
        parent, child = t.product_of
        chain = product_of_child[parent] if by_name[parent].depends_on is not None else index[parent]
        plan.append((index[t.name], chain, index[child]))
    return np.array(plan, dtype=np.int64)


def cascade_labels_(labels: np.ndarray, plan: np.ndarray) -> None:
    """In place on int8 [n, T] labels (-1 = unlabelled): a child is labelled only where its whole chain of parents
    is 1 (its head predicts the conditional); a derived task is 0 where that chain is 0, the child's label where
    the chain is 1, unlabelled where the chain is."""
    for derived, chain, child in plan:  # one step per cascade level, vectorised over rows
        labels[:, child] = np.where(labels[:, chain] == 1, labels[:, child], -1)
        labels[:, derived] = np.where(labels[:, chain] == 1, labels[:, child], labels[:, chain])


class ArrowConverter:
    """Converts projected Arrow tables of one feature spec into validated `Columns`."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.keys = spec.sparse_names
        self._table_size = {f.name: spec.tables[f.table].num_embeddings for f in spec.sparse}
        self._has_weights = any(t.weight_column for t in spec.tasks)
        self._regression_index = np.array([j for j, t in enumerate(spec.tasks) if t.is_regression], dtype=np.int64)
        self._regression_column = {int(j): r for r, j in enumerate(self._regression_index)}
        self._has_regression = len(self._regression_index) > 0
        self._cascades = cascade_label_plan(spec)

    def convert(self, table: pa.Table, where: str) -> Columns:
        """`where` names the file (and row group) for error messages."""
        n = table.num_rows
        ids: list[np.ndarray] = []
        offsets: list[np.ndarray | None] = []
        for f in self.spec.sparse:
            col = _array(table.column(f.source))
            size = self._table_size[f.name]
            if f.multi_valued:
                lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
                values = col.flatten()
                if values.null_count:
                    raise DataError(f"{where}: column {f.source!r} (sparse feature {f.name!r}) has a null id inside a list; expected integer ids")
                off = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=off[1:])
                offsets.append(off)
                col = values
            else:
                if col.null_count:
                    raise DataError(
                        f"{where}: column {f.source!r} (sparse feature {f.name!r}) has {col.null_count} null ids; "
                        "expected an id on every row (use a multi_valued list column for optional ids)"
                    )
                offsets.append(None)
            arr = np.zeros(0, dtype=np.int64)
            if len(col) and f.hashed:
                arr = _hashed(col, size)
            elif len(col):
                lo, hi = _min_max(col)  # checked before the cast to int64, which an unsigned id past 2**63 fails
                if lo < 0:
                    raise DataError(f"{where}: column {f.source!r} (sparse feature {f.name!r}) has negative id {lo}; expected ids in [0, {size}) or hashed: true")
                if hi >= size:
                    raise DataError(
                        f"{where}: column {f.source!r} (sparse feature {f.name!r}) has id {hi} beyond table "
                        f"{f.table!r} of size {size}; expected ids in [0, {size}), a larger num_embeddings, or hashed: true"
                    )
                arr = _int64(col)
            ids.append(arr)

        dense = np.empty((n, len(self.spec.dense)), dtype=np.float32)
        for j, f in enumerate(self.spec.dense):
            col = _array(table.column(f.source))
            if not pa.types.is_floating(col.type):  # fill in float: an int column would truncate it, bool reject it
                col = col.cast(pa.float64())
            x = col.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # nulls come out as NaN
            if not np.isfinite(x).all():  # one pass in the common case
                if np.isinf(x).any():
                    raise DataError(f"{where}: column {f.source!r} (dense feature {f.name!r}) has an infinite value "
                                    f"at row {int(np.flatnonzero(np.isinf(x))[0])}; expected finite numbers (null or "
                                    "NaN = fill)")
                x = np.where(np.isnan(x), np.float32(f.fill), x)  # null or NaN (pandas writes missing floats as NaN)
            if f.transform in ("log1p", "log1p_standard"):
                x = np.sign(x) * np.log1p(np.abs(x))
            if f.transform in ("standard", "log1p_standard"):
                x = (x - f.mean) / f.std
            dense[:, j] = x

        labels = np.empty((n, len(self.spec.tasks)), dtype=np.int8)
        weights = np.ones((n, len(self.spec.tasks)), dtype=np.float32) if self._has_weights else None
        targets = np.empty((n, len(self._regression_index)), dtype=np.float32) if self._has_regression else None
        for j, t in enumerate(self.spec.head_tasks):
            col = _array(table.column(t.source))
            if t.is_regression:
                y, labelled = regression_labels(col, t, where)
                labels[:, j] = np.where(labelled, 0, -1)
                targets[:, self._regression_column[j]] = y
            else:
                labels[:, j] = binary_labels(col, t, where)
            if t.weight_column:
                w = _array(table.column(t.weight_column)).cast(pa.float32())
                w = pc.fill_null(w, 0).to_numpy(zero_copy_only=False)
                bad = ~np.isfinite(w) | (w < 0)
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise DataError(f"{where}: column {t.weight_column!r} (sample weight of task {t.name!r}) has "
                                    f"{w[row]} at row {row}; expected finite weights >= 0 (null = 0)")
                weights[:, j] = w
        if self._cascades is not None:
            cascade_labels_(labels, self._cascades)
        return Columns(n=n, ids=ids, offsets=offsets, dense=dense, labels=labels, weights=weights, targets=targets,
                       regression_index=self._regression_index if self._has_regression else None)


__all__ = ["Columns", "ArrowConverter", "string_hashes", "is_string_ids"]
