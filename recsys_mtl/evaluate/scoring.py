"""Score a whole eval set with a loaded model: logits, labels and mask of every row, in file order."""

from __future__ import annotations

from pathlib import Path

import torch


def score_eval_set(model: torch.nn.Module, spec, data_path: str | Path,
                   batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every row of `data_path` once, [N, T] each (reader in eval mode: one slot, no shuffle,
    `drop_remainder=False`). `predict` pads the last batch with unlabelled rows; they are cut off."""
    from recsys_mtl.data.stream import ParquetStream
    from recsys_mtl.train.evaluation import predict

    stream = ParquetStream(str(data_path), spec, batch_size, rank=0, world_size=1, num_workers=0, seed=0,
                           shuffle=False, shuffle_buffer_rows=0, drop_remainder=False)
    if stream.num_rows == 0:
        from recsys_mtl.data.errors import DataError

        raise DataError(f"{data_path}: the eval set has no rows; expected at least one labelled row to score")
    stream.set_epoch(0)
    logits, labels, mask = predict(model, stream, spec, batch_size, torch.device("cpu"), 1)
    n = stream.num_rows
    return logits[:n], labels[:n], mask[:n]


def check_group_column(data_path: str | Path, column: str, spec) -> None:
    """Before any scoring: `column` exists in the data and holds integer or string ids (from the schema alone)."""
    _group_dataset(data_path, column, spec)


def _group_dataset(data_path: str | Path, column: str, spec):
    import pyarrow as pa

    from recsys_mtl.config.loader import ConfigError
    from recsys_mtl.data.stream import _discover

    dataset, _, fragments = _discover(data_path, spec)
    if column not in dataset.schema.names:
        raise ConfigError(f"{data_path}: GAUC group column {column!r} (evaluation.gauc_group) is missing; the data "
                          f"has: {', '.join(dataset.schema.names)}")
    t = dataset.schema.field(column).type
    t = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)):
        raise ConfigError(f"{data_path}: GAUC group column {column!r} has type {t}, expected integer or string ids")
    return dataset, fragments


def _group_table(data_path: str | Path, column: str, spec, extra: list[str]):
    """`column` (checked: present, integer or string ids, no nulls) as int64 ids, and the `extra` columns, of every
    row in position order (the reader's files sorted by path, rows in file order)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from recsys_mtl.config.loader import ConfigError

    dataset, fragments = _group_dataset(data_path, column, spec)
    cols = list(dict.fromkeys([column, *extra]))
    table = pa.concat_tables([frag.to_table(schema=dataset.schema, columns=cols) for frag in fragments])
    ids = table.column(column).combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if ids.null_count:
        raise ConfigError(f"{data_path}: GAUC group column {column!r} has {ids.null_count} null ids; expected an id "
                          "on every row")
    if not pa.types.is_integer(ids.type):  # string ids (the type is checked above)
        ids = pc.dictionary_encode(ids).indices
    return np.array(ids.cast(pa.int64()).to_numpy(zero_copy_only=False)), table  # a writable copy


def group_ids_by_position(data_path: str | Path, column: str, spec):
    """[rows] int64 group ids indexed by row position in the data set (what a stream's `batch_row_positions`
    gives): integer ids kept, string ids as dictionary indices."""
    return _group_table(data_path, column, spec, [])[0]


def eval_set_groups(data_path: str | Path, column: str, spec, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] int64 group ids of `column` for the rows `score_eval_set` scored (in its order: files sorted by path, rows
    in file order), checked against the scored labels of the first task so a different order cannot pass
    unnoticed. A missing column, another type than integer or string ids, or a null id is an error naming it."""
    import numpy as np

    from recsys_mtl.data.arrow import binary_labels, regression_labels

    first = spec.head_tasks[0]
    ids, table = _group_table(data_path, column, spec, [first.source])
    label_col = table.column(first.source).combine_chunks()
    if first.is_regression:
        y, labelled = regression_labels(label_col, first, str(data_path))
    else:
        y8 = binary_labels(label_col, first, str(data_path))
        y, labelled = np.maximum(y8, 0).astype(np.float32), y8 >= 0
    if len(y) != len(labels) or not (np.array_equal(labelled, mask[:, 0].numpy())
                                     and np.array_equal(y[labelled], labels[:, 0].numpy()[labelled])):
        raise RuntimeError(f"{data_path}: the rows of column {column!r} are not in the order the eval set was scored")
    return torch.from_numpy(ids)


__all__ = ["score_eval_set", "eval_set_groups", "group_ids_by_position", "check_group_column"]
