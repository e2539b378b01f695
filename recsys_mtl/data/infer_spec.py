"""Propose a feature spec from Parquet: `recsys-mtl data infer-spec DATA --out spec.yaml`.

It reads the schema, then each column once:

- 0/1 columns (integer or boolean, nulls allowed) become binary tasks (null = unlabelled);
- integer columns become id features with a table of the observed largest id + 1 plus headroom, or `hashed` when
  that would pass `--max-table-rows`;
- list columns become multi-valued id features the same way;
- string columns (and lists of strings) become hashed ids, the table about 10 rows per distinct value;
- float columns become dense features with `standard` (or `log1p_standard` for skewed non-negative ones) and the
  mean and std computed on the data;
- the columns named by `regression_tasks` (`--regression-task COL`, numbers: watch time, revenue) become regression
  tasks instead (null = unlabelled), with `transform: log1p` where they are non-negative and skewed.

Every choice is written with a comment saying why, for the user to edit. Hive partition columns (`date=...`) and
metadata files (`_feature_spec.yaml`, ...) are left out.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

#: rows per distinct value of a hashed table (about 9.5% of values share a row: docs/data.md)
HASHED_ROWS_PER_VALUE = 10
#: headroom over the largest id seen, for ids that appear after the data the spec was inferred from
ID_HEADROOM = 0.1


@dataclasses.dataclass
class Choice:
    kind: str  # "sparse" | "dense" | "task" | "skip"
    entry: dict
    why: str
    table: dict | None = None


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _rounded_up(n: int) -> int:
    """n rounded up to 2 significant digits (tables of 1,300 rather than 1,271)."""
    if n < 100:
        return n
    scale = 10 ** (len(str(n)) - 2)
    return -(-n // scale) * scale


def _skewed(x: np.ndarray) -> bool:
    """Non-negative with a long right tail (99th percentile > 10x the median): log1p first."""
    return bool(x.min() >= 0 and np.percentile(x, 99) > 10 * max(np.median(x), 1e-9) and x.max() > 10)


def regression_task(name: str, column: pa.ChunkedArray) -> Choice:
    """A numeric column the user named as a regression label: MSE on log1p(y) if it is skewed, else on y."""
    from recsys_mtl.data.errors import DataError

    t = column.type
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        raise DataError(f"column {name!r}: --regression-task needs a numeric column, got {t}")
    x = column.to_numpy(zero_copy_only=False).astype(np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        raise DataError(f"column {name!r}: --regression-task needs labelled rows, but it has no finite value")
    skewed = _skewed(x)
    entry = {"name": name, "type": "regression", "transform": "log1p" if skewed else "none", "loss": "mse"}
    return Choice("task", entry, f"regression task (--regression-task): values in [{x.min():.4g}, {x.max():.4g}], "
                                 f"{column.null_count:,} nulls = unlabelled" +
                  ("; skewed (99th percentile > 10x the median), so MSE on log1p(y)" if skewed else ""))


def infer_column(name: str, column: pa.ChunkedArray, *, embedding_dim: int, max_table_rows: int) -> Choice:
    t = column.type
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    values = pc.list_flatten(column) if is_list else column
    item = t.value_type if is_list else t
    non_null = len(values) - values.null_count
    if _is_string(item):
        distinct = pc.count_distinct(values).as_py()
        rows = _rounded_up(max(HASHED_ROWS_PER_VALUE * distinct, 16))
        return Choice("sparse", {"name": name, "table": name, **({"multi_valued": True} if is_list else {}),
                                 "hashed": True},
                      f"{'list of strings' if is_list else 'strings'}: {distinct:,} distinct values hashed into "
                      f"{rows:,} rows (~{HASHED_ROWS_PER_VALUE} per value)",
                      {"num_embeddings": rows, "embedding_dim": embedding_dim})
    if pa.types.is_boolean(item) and not is_list:
        return Choice("task", {"name": name}, f"boolean: a binary task ({values.null_count:,} nulls = unlabelled)")
    if pa.types.is_integer(item):
        low, high = (pc.min_max(values)[k].as_py() for k in ("min", "max")) if non_null else (0, 0)
        if not is_list and non_null and low >= 0 and high <= 1:
            return Choice("task", {"name": name}, f"0/1 values: a binary task ({values.null_count:,} nulls = "
                                                  "unlabelled); delete this task and add it under sparse if it is "
                                                  "an input")
        if values.null_count and not is_list:
            return Choice("skip", {"name": name}, f"integer with {values.null_count:,} nulls: an id feature needs an "
                                                  "id on every row (write nulls as 0, or as an empty list)")
        rows = _rounded_up(int(math.ceil((high + 1) * (1 + ID_HEADROOM))))
        if low < 0 or rows > max_table_rows:
            distinct = pc.count_distinct(values).as_py()
            rows = _rounded_up(min(max(HASHED_ROWS_PER_VALUE * distinct, 16), max_table_rows))
            return Choice("sparse", {"name": name, "table": name, **({"multi_valued": True} if is_list else {}),
                                     "hashed": True},
                          f"integer ids in [{low:,}, {high:,}] (too large for a table): {distinct:,} distinct "
                          f"values hashed into {rows:,} rows",
                          {"num_embeddings": rows, "embedding_dim": embedding_dim})
        return Choice("sparse", {"name": name, "table": name, **({"multi_valued": True} if is_list else {})},
                      f"{'list of ' if is_list else ''}integer ids up to {high:,}: a table of {rows:,} rows "
                      f"({int(ID_HEADROOM * 100)}% headroom for newer ids)",
                      {"num_embeddings": rows, "embedding_dim": embedding_dim})
    if pa.types.is_floating(item) and not is_list:
        x = values.to_numpy(zero_copy_only=False).astype(np.float64)
        x = x[np.isfinite(x)]
        if not len(x):
            return Choice("skip", {"name": name}, "float column with no finite value")
        skewed = _skewed(x)
        transform = "log1p_standard" if skewed else "standard"
        z = np.log1p(x) if skewed else x
        entry = {"name": name, "transform": transform, "mean": round(float(z.mean()), 6),
                 "std": round(max(float(z.std()), 1e-6), 6)}
        return Choice("dense", entry, f"float in [{x.min():.4g}, {x.max():.4g}]" +
                      (": skewed (99th percentile > 10x the median), so log1p first" if skewed else "") +
                      "; mean and std computed on these rows (a label? pass --regression-task " + name + ")")
    return Choice("skip", {"name": name}, f"type {t} is not an id, a number or a label")


def infer_spec(path: str | Path, *, name: str | None = None, embedding_dim: int = 16,
               max_table_rows: int = 5_000_000, regression_tasks: list[str] | tuple[str, ...] = ()
               ) -> tuple[dict, list[Choice]]:
    """(spec mapping, the choice made for each column) for the Parquet data at `path`; the columns named in
    `regression_tasks` are regression labels."""
    from recsys_mtl.data.errors import DataError
    from recsys_mtl.data.stream import _data_files

    paths = [Path(path)]
    files = _data_files(paths)
    base = str(paths[0]) if paths[0].is_dir() else None
    # hive partitions only under a folder: for a lone file pyarrow reports every column as a partition column
    dataset = ds.dataset(files, format="parquet", partitioning="hive" if base else None, partition_base_dir=base)
    partition_columns = set(dataset.partitioning.schema.names) if base and dataset.partitioning is not None else set()
    unknown = [c for c in regression_tasks if c not in dataset.schema.names or c in partition_columns]
    if unknown:
        raise DataError(f"{path}: --regression-task {', '.join(unknown)}: no such column; the data has: "
                        f"{', '.join(n for n in dataset.schema.names if n not in partition_columns)}")
    choices = []
    for field in dataset.schema:
        if field.name in partition_columns:
            continue
        column = dataset.to_table(columns=[field.name]).column(field.name)
        choices.append(regression_task(field.name, column) if field.name in regression_tasks else
                       infer_column(field.name, column, embedding_dim=embedding_dim, max_table_rows=max_table_rows))
    spec = {
        "name": name or Path(path).name,
        "tables": {c.entry["table"]: c.table for c in choices if c.kind == "sparse"},
        "sparse": [c.entry for c in choices if c.kind == "sparse"],
        "dense": [c.entry for c in choices if c.kind == "dense"],
        "tasks": [c.entry for c in choices if c.kind == "task"],
    }
    return spec, choices


def _flow(entry: dict) -> str:
    import yaml

    return yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000).strip()


def render(spec: dict, choices: list[Choice], source: str) -> str:
    """The spec as YAML with one comment per choice (what `FeatureSpec.load` reads back)."""
    why = {c.entry["name"]: c.why for c in choices}
    lines = [f"# Feature spec proposed by `recsys-mtl data infer-spec {source}`: every entry says why; edit freely.",
             "# Tables: one per id feature here; features may share a table (give them the same `table:`).",
             f"name: {spec['name']}", "tables:"]
    lines += [f"  {table}: {_flow(t)}" for table, t in spec["tables"].items()] or ["  {}"]
    for section in ("sparse", "dense", "tasks"):
        lines.append(f"{section}:" + ("" if spec[section] else " []"))
        lines += [f"  - {_flow(entry)}  # {why[entry['name']]}" for entry in spec[section]]
    skipped = [c for c in choices if c.kind == "skip"]
    if skipped:
        lines.append("# left out:")
        lines += [f"#   {c.entry['name']}: {c.why}" for c in skipped]
    return "\n".join(lines) + "\n"


__all__ = ["infer_spec", "infer_column", "regression_task", "render", "Choice"]
