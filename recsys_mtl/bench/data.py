"""Reader throughput: a raw pyarrow scan of the spec's columns vs ParquetStream producing Batches.

All read the same files and columns in the same process; they alternate
(raw, reader, reader without the row shuffle, ...) so drift in machine load hits each, and the
best of each is reported with the ratios. The third run keeps rows in file order inside each row
group (`shuffle_rows=False`): the difference is what shuffling the rows inside row groups costs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="existing dataset (default: generate synthetic data into --cache)")
    p.add_argument("--spec", type=Path, help="feature spec (default: DATA/_feature_spec.yaml)")
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--shuffle-buffer-rows", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("RECSYS_MTL_CACHE", ".cache")))


def raw_scan(files: list[str], columns: list[str], batch_size: int = 65_536) -> tuple[int, float]:
    import pyarrow.dataset as ds

    start = time.perf_counter()
    dataset = ds.dataset(files, format="parquet")
    rows = 0
    for rb in dataset.to_batches(columns=columns, batch_size=batch_size, batch_readahead=1, fragment_readahead=1):
        rows += rb.num_rows
    return rows, time.perf_counter() - start


def reader_scan(path: Path, spec, batch_size: int, shuffle_buffer_rows: int,
                shuffle_rows: bool = True) -> tuple[int, float]:
    from recsys_mtl.data.stream import ParquetStream

    start = time.perf_counter()
    stream = ParquetStream(path, spec, batch_size, shuffle=True, shuffle_buffer_rows=shuffle_buffer_rows, seed=0,
                           shuffle_rows=shuffle_rows)
    rows = 0
    for batch in stream:
        rows += batch.batch_size
    return rows, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.data.folder import spec_file
    from recsys_mtl.data.stream import _data_files
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    path = args.data
    if path is None:
        path = args.cache / f"bench-synth-{args.rows}-{args.tasks}"
        if not spec_file(path).exists():
            print(f"generating {args.rows:,} synthetic rows with {args.tasks} tasks into {path} ...", flush=True)
            generate_synthetic(path, SynthConfig(rows=args.rows, tasks=args.tasks), overwrite=True)
    spec = FeatureSpec.load(args.spec or spec_file(path))
    files = _data_files([path])
    columns = spec.columns()
    print(f"data: {path} ({len(files)} files), {len(columns)} columns "
          f"({len(spec.sparse)} sparse, {len(spec.dense)} dense, {spec.num_tasks} labels), batch {args.batch_size}, "
          f"{os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}")
    raws, readers, in_order = [], [], []
    for r in range(args.repeats):
        rows, sec = raw_scan(files, columns)
        raws.append(rows / sec)
        print(f"  run {r + 1}: raw pyarrow scan  {rows:>10,} rows {sec:7.2f} s {rows / sec:>12,.0f} rows/s", flush=True)
        rows, sec = reader_scan(path, spec, args.batch_size, args.shuffle_buffer_rows)
        readers.append(rows / sec)
        print(f"  run {r + 1}: ParquetStream     {rows:>10,} rows {sec:7.2f} s {rows / sec:>12,.0f} rows/s "
              f"(ratio {readers[-1] / raws[-1]:.2f})", flush=True)
        rows, sec = reader_scan(path, spec, args.batch_size, args.shuffle_buffer_rows, shuffle_rows=False)
        in_order.append(rows / sec)
        print(f"  run {r + 1}: rows in file order {rows:>10,} rows {sec:7.2f} s {rows / sec:>12,.0f} rows/s "
              f"(ratio {in_order[-1] / raws[-1]:.2f})", flush=True)
    print(f"best: raw scan {max(raws):,.0f} rows/s | reader {max(readers):,.0f} rows/s | "
          f"reader/raw {max(readers) / max(raws):.2f} (targets: >= 0.50 and >= 1,500,000 rows/s)")
    print(f"row shuffle inside row groups: reader {max(readers):,.0f} rows/s vs {max(in_order):,.0f} rows/s with rows "
          f"in file order (shuffled/in order {max(readers) / max(in_order):.2f})")
    return 0
