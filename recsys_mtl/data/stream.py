"""ParquetStream: partitioned Parquet -> Batch, split across ranks and loader workers.

Design (see ARCHITECTURE.md, "Data"):
- The unit of work is a row group. At construction every file's footer is read
  once (row counts, schema check against the feature spec), so a missing,
  corrupt or mismatched file fails fast with its name.
- Each epoch, units are ordered (seeded shuffle of (epoch, seed) when
  `shuffle`), then assigned greedily to the emptiest of `world_size *
  max(num_workers, 1)` slots; every rank computes the same assignment from
  metadata alone. With `drop_remainder` (training), every slot yields exactly
  `min_slot_rows // batch_size` batches, so every rank gets the same number of
  steps and collectives never hang at an epoch's end.
- An optional shuffle buffer permutes windows of `shuffle_buffer_rows` rows
  (rounded up to whole batches) with a seeded permutation per window, so a
  position can be restored by re-reading one window at most.
- The position is (epoch, batches yielded). Worker i of a rank serves slot
  (i + start) % W, so the DataLoader's round-robin over workers continues
  exactly where a restored position left off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.data.arrow import ArrowConverter, Columns, _array, _min_max
from recsys_mtl.data.batch import Batch
from recsys_mtl.data.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    num_rows: int


# Side files that live next to data (specs, manifests, checksums) and are not Parquet.
NON_DATA_SUFFIXES = {".yaml", ".yml", ".json", ".txt", ".md", ".crc", ".csv", ".tsv"}


def _is_data_file(relative_parts: tuple[str, ...]) -> bool:
    return (not any(part.startswith((".", "_")) for part in relative_parts)
            and Path(relative_parts[-1]).suffix not in NON_DATA_SUFFIXES)


def _data_files(paths: list[Path]) -> list[str]:
    files = []
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: no such file or directory (expected a Parquet file or a folder of Parquet files)")
        if p.is_file():
            files.append(str(p))
            continue
        for f in sorted(p.rglob("*")):
            if f.is_file() and _is_data_file(f.relative_to(p).parts):
                files.append(str(f))
    if not files:
        raise DataError(f"{', '.join(map(str, paths))}: no Parquet files found")
    return files


def is_uri(path: str | Path) -> bool:
    """A pyarrow filesystem URI (file://, s3://, gs://, hdfs://, ...) rather than a local path."""
    return "://" in str(path)


def _uri_data_files(uris: list[str]) -> tuple[pafs.FileSystem, list[str], str | None]:
    """The Parquet files under pyarrow filesystem URIs (one filesystem): (filesystem, paths in it, base folder)."""
    filesystem, roots = None, []
    for uri in uris:
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
            raise DataError(f"{uri}: cannot open this URI as a pyarrow filesystem ({exc}); expected e.g. "
                            "file:///abs/path or s3://bucket/prefix (spaces written as %20)") from None
        if filesystem is not None and fs.type_name != filesystem.type_name:
            raise DataError(f"{uri}: every data path of one dataset must be on one filesystem, "
                            f"{uris[0]} is on {filesystem.type_name} and this one on {fs.type_name}")
        filesystem = filesystem or fs
        roots.append(root.rstrip("/") or "/")
    files, base = [], None
    for uri, root in zip(uris, roots):
        try:
            info = filesystem.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"{uri}: no such file or directory (expected a Parquet file or a folder of Parquet files)")
            if info.type == pafs.FileType.File:
                files.append(root)
                continue
            found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        except OSError as exc:
            raise DataError(f"{uri}: cannot list ({exc})") from None
        base = root if len(uris) == 1 else None
        for f in sorted(found, key=lambda f: f.path):
            if f.type == pafs.FileType.File and _is_data_file(tuple(f.path[len(root):].strip("/").split("/"))):
                files.append(f.path)
    if not files:
        raise DataError(f"{', '.join(uris)}: no Parquet files found")
    return filesystem, files, base


def _discover(path: str | Path | list, spec: FeatureSpec) -> tuple[ds.Dataset, list[RowGroup], list]:
    items = list(path) if isinstance(path, (list, tuple)) else [path]
    uris = [str(p) for p in items if is_uri(p)]
    if uris and len(uris) != len(items):
        raise DataError(f"{', '.join(map(str, items))}: data paths are either all local or all URIs, not both")
    if uris:
        filesystem, files, base = _uri_data_files(uris)
        paths: list = uris
    else:
        paths = [Path(p) for p in items]
        filesystem, files = None, _data_files(paths)
        base = str(paths[0]) if len(paths) == 1 and paths[0].is_dir() else None
    try:
        # string ids come as Arrow dictionaries straight from Parquet's dictionary pages: each distinct value is
        # hashed once per row group (data/arrow.py); integer columns are unaffected
        hashed = sorted({f.source for f in spec.sparse if f.hashed})
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=hashed))
        dataset = ds.dataset(files, format=fmt, partitioning="hive", partition_base_dir=base, filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{', '.join(map(str, paths))}: cannot open as a Parquet dataset: {exc}") from None
    fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    units: list[RowGroup] = []
    columns = spec.columns()
    first_types: dict[str, tuple[pa.DataType, str]] = {}
    for frag in fragments:
        try:
            meta = frag.metadata
            schema = frag.physical_schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{frag.path}: not a readable Parquet file ({exc})") from None
        spec.check_schema(schema, frag.path)
        for col in columns:
            t = _comparable(schema.field(col).type)
            if col not in first_types:
                first_types[col] = (t, frag.path)
            elif first_types[col][0] != t:
                raise DataError(
                    f"{frag.path}: column {col!r} has type {t} but {first_types[col][1]} has {first_types[col][0]}; "
                    "all files of a dataset must share one schema"
                )
        for i in range(meta.num_row_groups):
            rows = meta.row_group(i).num_rows
            if rows:
                units.append(RowGroup(frag.path, i, rows))
    return dataset, units, fragments


def _id_statistics(leaves: list[pq.ColumnChunkMetaData]) -> tuple[int, int] | None:
    """(min, max) of an integer id column (or a list column's items) from its row-group chunk's statistics; None
    when the writer stored none (or the column is not integer: the schema check reports that)."""
    if len(leaves) != 1:
        return None
    stats = leaves[0].statistics
    if stats is None or not stats.has_min_max or stats.physical_type not in ("INT32", "INT64"):
        return None
    if stats.null_count == stats.num_values and stats.num_values:  # all null: nothing to check here
        return None
    return int(stats.min), int(stats.max)


def _check_id_range(features: list, low: int, high: int, spec: FeatureSpec, where: str) -> None:
    for f in features:
        size = spec.tables[f.table].num_embeddings
        if low < 0:
            raise DataError(f"{where}: column {f.source!r} (sparse feature {f.name!r}) has negative id {low}; "
                            f"expected ids in [0, {size}) or hashed: true")
        if high >= size:
            raise DataError(f"{where}: column {f.source!r} (sparse feature {f.name!r}) has id {high} beyond table "
                            f"{f.table!r} of size {size}; expected ids in [0, {size}), a larger num_embeddings, "
                            "or hashed: true")


def _comparable(t: pa.DataType) -> pa.DataType:
    """A column's type as the reader sees it: whether a list's items may be null is left out (writers differ,
    and a null item is refused when read)."""
    if pa.types.is_list(t):
        return pa.list_(t.value_type)
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_type)
    return t


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


class ParquetStream:
    """An iterable of `Batch` over a Parquet dataset for one rank.

    Args:
        path: a Parquet file, a folder (hive partitions such as `date=2026-01-01/` allowed) or a list of them;
            local paths, or pyarrow filesystem URIs (file:///abs/path, s3://bucket/prefix, ...) all on one filesystem.
        spec: the feature spec; its columns are the only ones read.
        batch_size: rows per batch.
        rank, world_size: this process's place among the data-parallel ranks.
        num_workers: DataLoader worker processes (0: read in this process).
        seed: seeds the per-epoch unit shuffle and the shuffle buffer.
        shuffle: shuffle row-group order each epoch, and the rows inside each row group (a time-sorted file
            would otherwise train in time order within its row groups); `shuffle_rows=False` keeps the rows of a
            row group in file order (the reader before it shuffled them; `bench data` measures the difference).
        shuffle_buffer_rows: if > 0, also permute rows within windows of this many rows.
        drop_remainder: give every rank the same number of full batches (training); False keeps
            every row, the last batch of each slot may be short (evaluation on one rank).
        pin_memory: with workers, hand batches over in page-locked memory (for asynchronous
            host-to-GPU copies); ignored without workers.
    """

    def __init__(
        self,
        path: str | Path | list,
        spec: FeatureSpec,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer_rows: int = 0,
        drop_remainder: bool = True,
        pin_memory: bool = False,
        shuffle_rows: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if shuffle_buffer_rows < 0:
            raise ValueError(f"shuffle_buffer_rows must be >= 0, got {shuffle_buffer_rows}")
        self.spec = spec
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_rows = shuffle and shuffle_rows
        self.window = -(-shuffle_buffer_rows // batch_size) * batch_size if shuffle_buffer_rows else 0
        self.drop_remainder = drop_remainder
        self.pin_memory = pin_memory
        self.columns = spec.columns()
        self.dataset, self.units, fragments = _discover(path, spec)
        self._fragments = {f.path: f for f in fragments}
        self._unit_number = {(u.path, u.index): i for i, u in enumerate(self.units)}  # seeds its row shuffle
        self.num_rows = sum(u.num_rows for u in self.units)
        self.fingerprint = hashlib.sha1(
            "|".join(f"{u.path}:{u.index}:{u.num_rows}" for u in self.units).encode()
        ).hexdigest()[:16]
        self.epoch = 0
        self.batch = 0
        self._plans: dict[int, tuple[list[list[RowGroup]], list[int]]] = {}
        self._converter = ArrowConverter(spec)
        if drop_remainder and len(self) == 0:
            slots = world_size * max(num_workers, 1)
            fix = ("row groups are what ranks and workers split, so some slot gets none: write the data in more, "
                   "smaller row groups, or use fewer ranks/workers" if len(self.units) < slots else
                   "use a smaller batch_size or fewer ranks/workers")
            raise DataError(
                f"{path}: {self.num_rows} rows in {len(self.units)} row groups give no full batch of "
                f"{batch_size} rows for each of {slots} reader slots ({world_size} ranks x "
                f"{max(num_workers, 1)} workers); {fix}"
            )

    def check_ids(self) -> None:
        """DataError if any id of a table-indexed (not hashed) sparse column lies outside its table, before any
        training: each row group's Parquet min/max statistics where the writer stored them, else a read of that
        row group's id columns (the message is the one the reader would give when it reached the row)."""
        features = [f for f in self.spec.sparse if not f.hashed]
        by_column: dict[str, list] = {}
        for f in features:
            by_column.setdefault(f.source, []).append(f)
        for unit in self.units:
            meta = self._fragments[unit.path].metadata.row_group(unit.index)
            leaves: dict[str, list] = {}  # top-level column -> its leaf chunks (a list column has one)
            for i in range(meta.num_columns):
                chunk = meta.column(i)
                leaves.setdefault(chunk.path_in_schema.split(".")[0], []).append(chunk)
            unread = []
            for column, feats in by_column.items():
                low_high = _id_statistics(leaves.get(column, []))
                if low_high is None:
                    unread.append(column)
                    continue
                _check_id_range(feats, *low_high, self.spec, f"{unit.path} (row group {unit.index})")
            if unread:
                table = self._fragments[unit.path].subset(row_group_ids=[unit.index]).to_table(columns=unread)
                for column in unread:
                    values = _array(table.column(column))
                    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
                        values = values.flatten()
                    if len(values) > values.null_count:  # nulls are the reader's own error
                        low, high = _min_max(values)
                        _check_id_range(by_column[column], low, high, self.spec,
                                        f"{unit.path} (row group {unit.index})")

    @property
    def fragments(self) -> dict:
        """The dataset's Parquet fragments by path (their footers are read once, here)."""
        return self._fragments

    # -- planning ------------------------------------------------------------------------
    @property
    def slots_per_rank(self) -> int:
        return max(self.num_workers, 1)

    def _plan(self, epoch: int) -> tuple[list[list[RowGroup]], list[int]]:
        """(row groups of each slot, batches of each slot) for an epoch; same on every rank."""
        if epoch not in self._plans:
            order = list(self.units)
            if self.shuffle:
                perm = _rng(self.seed, epoch, 0x5EED).permutation(len(order))
                order = [order[i] for i in perm]
            n_slots = self.world_size * self.slots_per_rank
            slots: list[list[RowGroup]] = [[] for _ in range(n_slots)]
            rows = [0] * n_slots
            least = [(0, s) for s in range(n_slots)]  # (rows, slot): the emptiest slot, lowest index on ties
            for unit in order:
                _, s = heapq.heappop(least)
                slots[s].append(unit)
                rows[s] += unit.num_rows
                heapq.heappush(least, (rows[s], s))
            if self.drop_remainder:
                steps = min(rows) // self.batch_size
                counts = [steps] * n_slots
            else:
                counts = [-(-r // self.batch_size) for r in rows]
            self._plans = {epoch: (slots, counts)}
        return self._plans[epoch]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (equal on every rank with drop_remainder)."""
        return self.batches_in_epoch(self.epoch)

    def batches_in_epoch(self, epoch: int) -> int:
        """Batches this rank yields in `epoch`: epochs differ when shuffled row groups split unevenly."""
        _, counts = self._plan(epoch)
        first = self.rank * self.slots_per_rank
        return sum(counts[first : first + self.slots_per_rank])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batch = 0

    # -- position --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.position_after(self.batch)

    def position_after(self, batches_consumed: int) -> dict:
        """The position after `batches_consumed` batches of the current epoch (for checkpoints:
        a prefetching pipeline has pulled more batches than the model has consumed)."""
        return {
            "epoch": self.epoch,
            "batch": int(batches_consumed),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_rows": self.shuffle_rows,
            "window": self.window,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("batch_size", "world_size", "num_workers", "seed", "shuffle", "shuffle_rows", "window", "fingerprint"):
            mine = self.position_after(0)[key]
            if key in state and state[key] != mine:
                what = "the dataset's files or row groups changed" if key == "fingerprint" else f"{key} was {state[key]}, the stream has {mine}"
                raise DataError(f"cannot restore the data position: {what}; resume with the same data and reader settings")
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        if self.batch > len(self):
            raise DataError(f"cannot restore the data position: batch {self.batch} is beyond the epoch's {len(self)} batches")

    # -- reading ---------------------------------------------------------------------------
    def _read(self, unit: RowGroup, epoch: int) -> Columns:
        where = f"{unit.path} (row group {unit.index})"
        try:
            table = self._fragments[unit.path].subset(row_group_ids=[unit.index]).to_table(
                columns=self.columns, use_threads=True
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{where}: cannot read: {exc}") from None
        cols = self._converter.convert(table, where)
        if self.shuffle_rows:  # the same order for the same (seed, epoch, row group): a resume cuts the same rows
            cols = cols.take(_rng(self.seed, epoch, self._unit_number[(unit.path, unit.index)], 0x0120)
                             .permutation(cols.n))
        return cols

    def _rows(self, units: list[RowGroup], start: int, stop: int, epoch: int) -> Iterator[Columns]:
        """Rows [start, stop) of the concatenation of `units`, as Columns pieces.

        The next row group is decoded and converted on a read-ahead thread (Arrow and numpy
        release the GIL) while the caller cuts batches from the current one.
        """
        wanted = []
        pos = 0
        for unit in units:
            lo, hi = pos, pos + unit.num_rows
            pos = hi
            if hi > start and lo < stop:
                wanted.append((unit, max(start, lo) - lo, min(stop, hi) - lo))
        if not wanted:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-read-ahead") as pool:
            future = pool.submit(self._read, wanted[0][0], epoch)
            for i, (unit, a, b) in enumerate(wanted):
                cols = future.result()
                if i + 1 < len(wanted):
                    future = pool.submit(self._read, wanted[i + 1][0], epoch)
                yield cols if (a, b) == (0, cols.n) else cols.slice(a, b)

    def iter_slot(self, slot: int, epoch: int, start_batch: int) -> Iterator[Batch]:
        """Batches of one slot from `start_batch` on. Deterministic in (seed, epoch, slot)."""
        slots, counts = self._plan(epoch)
        units, n_batches = slots[slot], counts[slot]
        total = sum(u.num_rows for u in units)
        end = min(n_batches * self.batch_size, total)
        start = start_batch * self.batch_size
        if start >= end:
            return
        keys = self._converter.keys
        B = self.batch_size
        if self.window:
            w0 = start // self.window * self.window
            skip = start - w0
            for wstart in range(w0, end, self.window):
                wend = min(wstart + self.window, end)
                block = Columns.concat(list(self._rows(units, wstart, wend, epoch)))
                block = block.take(_rng(self.seed, epoch, slot, wstart // self.window).permutation(block.n))
                for s in range(skip, block.n, B):
                    yield block.slice(s, min(s + B, block.n)).to_batch(keys)
                skip = 0
            return
        pending: list[Columns] = []
        have = 0
        for piece in self._rows(units, start, end, epoch):
            while piece.n:
                take = min(B - have, piece.n)
                pending.append(piece.slice(0, take) if take < piece.n else piece)
                have += take
                piece = piece.slice(take, piece.n) if take < piece.n else piece.slice(0, 0)
                if have == B:
                    yield Columns.concat(pending).to_batch(keys)
                    pending, have = [], 0
        if pending:
            yield Columns.concat(pending).to_batch(keys)

    def row_groups_of_rank(self, epoch: int | None = None) -> list[RowGroup]:
        """The row groups this rank reads in `epoch` (all its slots), in reading order."""
        slots, _ = self._plan(self.epoch if epoch is None else epoch)
        first = self.rank * self.slots_per_rank
        return [u for slot in slots[first:first + self.slots_per_rank] for u in slot]

    def read_row_group(self, unit: RowGroup, columns: list[str]) -> pa.Table:
        """`columns` of one row group as an Arrow table (any columns of the file, not only the spec's)."""
        try:
            return self._fragments[unit.path].subset(row_group_ids=[unit.index]).to_table(columns=columns,
                                                                                          use_threads=True)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{unit.path} (row group {unit.index}): cannot read: {exc}") from None

    def batch_row_positions(self, epoch: int | None = None) -> Iterator[np.ndarray]:
        """The position of each row in the whole data set (files sorted by path, row groups in order), batch by
        batch, for the batches this rank yields in `epoch` from its first: the same row has the same position
        however many ranks read the data. Needs a reader whose batches follow its slot's rows
        (no shuffle buffer, no loader workers)."""
        if self.window or self.num_workers:
            raise ValueError("batch_row_positions: needs shuffle_buffer_rows=0 and num_workers=0")
        epoch = self.epoch if epoch is None else epoch
        first_row, offset = {}, 0
        for unit in self.units:
            first_row[(unit.path, unit.index)] = offset
            offset += unit.num_rows
        slots, counts = self._plan(epoch)
        ranges = [(first_row[(u.path, u.index)], u.num_rows) for u in slots[self.rank]]
        end = min(counts[self.rank] * self.batch_size, sum(n for _, n in ranges))
        pending: list[np.ndarray] = []
        have = 0
        for start, n in ranges:
            rows = np.arange(start, start + n, dtype=np.int64)
            while rows.size and end > 0:
                take = min(self.batch_size - have, rows.size, end)
                pending.append(rows[:take])
                rows, have, end = rows[take:], have + take, end - take
                if have == self.batch_size or end == 0:
                    yield np.concatenate(pending)
                    pending, have = [], 0

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self.batch
        if self.num_workers == 0:
            for batch in self.iter_slot(self.rank, epoch, start):
                self.batch += 1
                yield batch
            return
        loader = DataLoader(
            _WorkerSlots(self, epoch, start), batch_size=None, num_workers=self.num_workers,
            persistent_workers=False, prefetch_factor=2, pin_memory=self.pin_memory,
        )
        for batch in loader:
            self.batch += 1
            yield batch


class _WorkerSlots(IterableDataset):
    """Worker i of the rank serves slot (i + start) % W, continuing the round-robin at `start`."""

    def __init__(self, stream: ParquetStream, epoch: int, start: int) -> None:
        self.stream, self.epoch, self.start = stream, epoch, start

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        W = self.stream.slots_per_rank
        i = info.id if info is not None else 0
        j = (i + self.start) % W  # this worker's slot within the rank
        torch.set_num_threads(1)
        consumed = self.start // W + (1 if j < self.start % W else 0)
        return self.stream.iter_slot(self.stream.rank * W + j, self.epoch, consumed)


__all__ = ["ParquetStream", "RowGroup"]
