"""Score an eval set with loaded models.

- `score_statistics`: streaming. Each process reads its share of the row groups once, runs every model on
  each batch (forward only, inference mode) and adds the batch to a `StreamingEvaluator`; the processes'
  statistics are summed by one all-reduce at the end. Memory does not depend on the number of rows.
- `score_eval_set`: the exact reference path (`evaluate --exact`): logits, labels and mask of every row in memory.
- `score_table`: predictions of an Arrow table (`recsys-mtl predict`, the MLflow pyfunc model).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from recsys_mtl.evaluate import SCORING_BATCH_SIZE
from recsys_mtl.metrics.streaming_eval import evaluator_for, task_kinds

#: the prediction column of task t is PREDICTION_PREFIX + t (`predict`'s output, the pyfunc model's)
PREDICTION_PREFIX = "pred_"
T = TypeVar("T")


def eval_stream(spec, data_path: str | Path, batch_size: int, rank: int = 0, world_size: int = 1):
    """Every row once, in file order, this rank's row groups (no shuffle, no loader workers, short last batch)."""
    from recsys_mtl.data.stream import ParquetStream

    stream = ParquetStream(str(data_path), spec, batch_size, rank=rank, world_size=world_size, num_workers=0, seed=0,
                           shuffle=False, shuffle_buffer_rows=0, drop_remainder=False)
    if stream.num_rows == 0:
        from recsys_mtl.data.errors import DataError

        raise DataError(f"{data_path}: the eval set has no rows; expected at least one labelled row to score")
    stream.set_epoch(0)
    return stream


def read_ahead(batches: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`batches`, produced by a background thread up to `depth` ahead: the next batch is read and assembled
    (Parquet decode, id remapping, KeyedJaggedTensor) while the model scores the current one. An exception in the
    reader is raised here, at the batch where it happened; leaving the loop early stops the reader."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            slots.put((done, exc))

    reader = threading.Thread(target=produce, name="scoring-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item, exc = slots.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue, then let it see `stop`
            try:
                slots.get_nowait()
            except queue.Empty:
                pass
            reader.join(timeout=0.1)


def _same_reader(a, b) -> bool:
    """Whether two specs read the same columns into the same tensors (then one read serves both models)."""
    return a == b


@torch.inference_mode()
def score_statistics(models: Sequence[torch.nn.Module], specs: Sequence, data_path: str | Path, batch_size: int, *,
                     n_boot: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                     on_batch: Callable[[int], None] | None = None, gauc_group: str | None = None):
    """Streaming statistics of `models` (1, or candidate then baseline) on the same rows of `data_path`.

    Models whose specs differ each get their own reader over the same files (row order is the same); their
    labels must agree. With `world_size` > 1 this rank reads its row groups and the statistics are all-reduced:
    every rank returns the totals. `on_batch(rows)` is called after each batch (progress). `gauc_group`: a column of
    group ids; the evaluator's `grouped_scores` then keeps each labelled row's group, scores and labels (exact GAUC
    needs them: 8 + T (4 models + 1) bytes per row), gathered on rank 0."""
    if len(models) not in (1, 2) or len(specs) != len(models):
        raise ValueError("score_statistics: one model, or a candidate and a baseline, each with its spec")
    streams = [eval_stream(specs[0], data_path, batch_size, rank, world_size)]
    if len(models) == 2 and not _same_reader(specs[0], specs[1]):
        streams.append(eval_stream(specs[1], data_path, batch_size, rank, world_size))
    evaluator = evaluator_for(specs[0], n_models=len(models), n_boot=n_boot if len(models) == 2 else 0, seed=seed)
    positions = streams[0].batch_row_positions()
    grouped, group_ids = None, None
    if gauc_group:
        from recsys_mtl.metrics.grouped import GroupedScores

        group_ids = group_ids_by_position(data_path, gauc_group, specs[0])
        grouped = GroupedScores(n_models=len(models), task_types=specs[0].task_types)
    for batches in read_ahead(zip(*streams)):
        batch = batches[0]
        if len(batches) == 2 and not (batches[1].labels.equal(batch.labels)
                                      and batches[1].label_mask.equal(batch.label_mask)):
            from recsys_mtl.config.loader import ConfigError

            raise ConfigError(f"the baseline's feature spec reads other labels from {data_path} than the model's: "
                              "compare models whose specs name the same label columns")
        inputs = batches if len(batches) == len(models) else batches * len(models)  # one read for both models
        logits = [model(b.dense, b.sparse) for model, b in zip(models, inputs)]
        rows = next(positions)
        evaluator.update(logits, batch.labels, batch.label_mask, rows)
        if grouped is not None:
            grouped.update(group_ids[rows], logits, batch.labels, batch.label_mask)
        if on_batch is not None:
            on_batch(batch.batch_size)
    if grouped is not None and world_size > 1:
        grouped.gather_()
    evaluator.grouped_scores = grouped
    return evaluator.all_reduce_() if world_size > 1 else evaluator


def score_eval_set(model: torch.nn.Module, spec, data_path: str | Path,
                   batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every row of `data_path` once, [N, T] each, in memory (the exact path). `predict` pads the last batch with
    unlabelled rows; they are cut off."""
    from recsys_mtl.train.evaluation import predict

    stream = eval_stream(spec, data_path, batch_size)
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


def prediction_columns(spec) -> list[str]:
    return [PREDICTION_PREFIX + name for name in spec.task_names]


def features_only(spec):
    """The spec without its tasks: the columns a model reads to score (labels are not needed)."""
    import dataclasses

    return dataclasses.replace(spec, tasks=[])


def to_predictions(logits, spec) -> np.ndarray:
    """[B, T] logits -> predictions: sigmoid for binary tasks, the label transform undone for regression tasks."""
    import torch

    types, transforms = task_kinds(spec)
    out = torch.sigmoid(logits.float())
    for t, (kind, transform) in enumerate(zip(types, transforms)):
        if kind == "regression":
            out[:, t] = torch.expm1(logits[:, t]) if transform == "log1p" else logits[:, t]
    return out.numpy()


def score_table(model, spec, table, where: str, batch_size: int = SCORING_BATCH_SIZE) -> np.ndarray:
    """[rows, T] float32 predictions of an Arrow table holding the spec's feature columns (others are ignored).

    A missing feature column or one of the wrong type is a one-line ConfigError naming it (and `where`)."""
    import torch

    from recsys_mtl.data.arrow import ArrowConverter

    features = features_only(spec)
    features.check_schema(table.schema, where)
    columns = ArrowConverter(features).convert(table, where)
    keys = features.sparse_names
    out = np.empty((columns.n, spec.num_tasks), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, columns.n, batch_size):
            stop = min(start + batch_size, columns.n)
            batch = columns.slice(start, stop).to_batch(keys)
            out[start:stop] = to_predictions(model(batch.dense, batch.sparse), spec)
    return out


__all__ = ["PREDICTION_PREFIX", "prediction_columns", "features_only", "to_predictions", "score_table", "eval_stream", "evaluator_for", "score_statistics", "score_eval_set", "task_kinds", "eval_set_groups",
           "group_ids_by_position", "check_group_column"]
