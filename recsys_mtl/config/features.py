"""Feature specs: what each Parquet column is (sparse ids, dense values, task labels).

A spec is YAML under `feature_specs/`, loaded with `FeatureSpec.load(path)`:

    name: example
    tables:                      # embedding tables; several features may share one
      item: {num_embeddings: 500000, embedding_dim: 16, pooling: sum}
    sparse:
      - {name: item_id, table: item}
      - {name: hist_items, table: item, multi_valued: true}
      - {name: query_hash, table: query, hashed: true}     # id -> id mod table size
    dense:
      - {name: price, transform: log1p}
    tasks:
      - {name: click}                                      # label column defaults to the name
      - {name: conversion, label: is_conversion, depends_on: click}   # a cascade (below)

A null label means "no label for this task on this row": it is masked, not 0.

Cascades (ESMM, Ma et al. 2018): a binary task with `depends_on: <parent>` (a binary task) is post-parent: its head
predicts p(child | parent), and its own loss (`child_loss`, default true) covers rows where the parent is 1. The spec
then gains a derived product task, named `<parent>_<child>` unless `product_name` says otherwise, predicting
p(parent and child) = p(parent) p(child | parent) (along the whole chain when the parent depends on another task),
with label "parent and child are 1" on every row where the parent is labelled (0 where it is 0; unlabelled where the
parent is 1 and the child is null). Derived tasks follow the declared ones in `tasks` and have no head of their own.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

import pyarrow as pa

from recsys_mtl.config.loader import ConfigError, Where, load_yaml


@dataclasses.dataclass(frozen=True)
class TableSpec:
    num_embeddings: int
    embedding_dim: int
    pooling: Literal["sum", "mean"] = "sum"

    def validate(self, where: Where) -> None:
        if self.num_embeddings < 1:
            raise where.child("num_embeddings").error(f"must be >= 1, got {self.num_embeddings}")
        if self.embedding_dim < 1:
            raise where.child("embedding_dim").error(f"must be >= 1, got {self.embedding_dim}")


@dataclasses.dataclass(frozen=True)
class SparseFeature:
    """An id feature. Single-valued: an integer column. Multi-valued: a list<integer> column. With `hashed: true`
    the column may hold strings (or lists of strings) instead: each distinct value is hashed into the table."""

    name: str
    table: str
    column: str | None = None
    multi_valued: bool = False
    hashed: bool = False  # ids are taken modulo the table size; otherwise an id >= size is an error

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclasses.dataclass(frozen=True)
class DenseFeature:
    """A numeric feature; nulls become `fill`, then the transform is applied."""

    name: str
    column: str | None = None
    transform: Literal["none", "log1p", "standard", "log1p_standard"] = "none"
    # the statistics `standard` subtracts and divides by (of the log1p'd column for log1p_standard): no default,
    # since a guessed 0 and 1 would leave the feature unscaled without a word
    mean: float | None = None
    std: float | None = None
    fill: float = 0.0

    @property
    def source(self) -> str:
        return self.column or self.name

    def validate(self, where: Where) -> None:
        if self.std is not None and self.std <= 0:
            raise where.child("std").error(f"must be > 0, got {self.std}")
        if self.transform.endswith("standard") and (self.mean is None or self.std is None):
            missing = " and ".join(k for k in ("mean", "std") if getattr(self, k) is None)
            raise where.error(f"transform {self.transform!r} needs the column's mean and std (of log1p(x) for "
                              f"log1p_standard), and {missing} is not given: `recsys-mtl data infer-spec DATA` "
                              "computes them, or use transform: none | log1p")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task and its label column; null means unlabelled for that row.

    binary (the default): labels 0/1, loss `bce`.
    regression: a numeric label, clipped to `clip` (raw scale), then transformed (`none` | `log1p`); loss `mse` or
    `huber` (with `delta`) on the transformed label, and the head predicts the transformed label.
    """

    name: str
    label: str | None = None
    type: Literal["binary", "regression"] = "binary"
    loss: Literal["bce", "mse", "huber"] | None = None  # None: bce for binary, mse for regression
    weight_column: str | None = None
    transform: Literal["none", "log1p"] = "none"
    delta: float = 1.0
    clip: list[float] | None = None
    depends_on: str | None = None  # the parent task: this head predicts p(this | parent)
    child_loss: bool = True  # with depends_on: train this head on its own labels (parent-positive rows) too
    product_name: str | None = None  # with depends_on: the derived product task's name (default <parent>_<child>)
    product_of: list[str] | None = None  # set by the framework on a derived task: [parent, child]

    @property
    def source(self) -> str:
        return self.label or self.name

    @property
    def is_derived(self) -> bool:
        """A product task of a cascade: no head and no label column of its own."""
        return self.product_of is not None

    @property
    def is_regression(self) -> bool:
        return self.type == "regression"

    @property
    def loss_name(self) -> str:
        """The loss this task trains with (its default when `loss` is not given)."""
        return self.loss or ("mse" if self.is_regression else "bce")

    def validate(self, where: Where) -> None:
        if self.depends_on is None:
            for key, default in (("child_loss", True), ("product_name", None)):
                if getattr(self, key) != default:
                    raise where.child(key).error(f"task {self.name!r}: {key} applies to a task with depends_on only")
        elif self.is_regression:
            raise where.child("depends_on").error(f"task {self.name!r} is a regression task: depends_on (a cascade) "
                                                  "takes binary tasks only")
        if self.is_regression:
            if self.loss_name not in ("mse", "huber"):
                raise where.child("loss").error(f"task {self.name!r} is a regression task: expected loss 'mse' or "
                                                f"'huber', got {self.loss!r}")
            if not self.delta > 0 or not math.isfinite(self.delta):
                raise where.child("delta").error(f"task {self.name!r}: expected a finite number > 0, got {self.delta}")
            if self.clip is not None:
                if len(self.clip) != 2 or not all(math.isfinite(v) for v in self.clip) or self.clip[0] >= self.clip[1]:
                    raise where.child("clip").error(f"task {self.name!r}: expected [low, high] with finite low < high, "
                                                    f"got {self.clip}")
                if self.transform == "log1p" and self.clip[0] < 0:
                    raise where.child("clip").error(f"task {self.name!r}: low {self.clip[0]} is negative under "
                                                    "transform log1p, which takes labels >= 0")
            return
        if self.loss_name != "bce":
            raise where.child("loss").error(f"task {self.name!r} is binary: expected loss 'bce', got {self.loss!r} "
                                            "(set type: regression for mse or huber)")
        for key, default in (("transform", "none"), ("delta", 1.0), ("clip", None)):
            if getattr(self, key) != default:
                raise where.child(key).error(f"task {self.name!r} is binary: {key} applies to regression tasks only "
                                             "(set type: regression)")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    tables: dict[str, TableSpec]
    sparse: list[SparseFeature]
    tasks: list[TaskSpec]
    dense: list[DenseFeature] = dataclasses.field(default_factory=list)
    description: str = ""

    def __post_init__(self) -> None:
        # the derived product tasks of cascades follow the declared tasks (the heads), in the children's order;
        # a product already listed (a spec written back by to_yaml) is kept as it is
        declared = [t for t in self.tasks if not t.is_derived]
        listed = {tuple(t.product_of): t for t in self.tasks if t.is_derived}
        derived = []
        for t in declared:
            if t.depends_on is not None:
                key = (t.depends_on, t.name)
                derived.append(listed.pop(key, None) or TaskSpec(name=t.product_name or f"{t.depends_on}_{t.name}",
                                                                 product_of=list(key)))
        object.__setattr__(self, "tasks", declared + derived + list(listed.values()))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSpec":
        return load_yaml(path, cls)

    # -- derived views -------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        """Every task the model outputs: the declared ones (with heads), then the cascades' derived products."""
        return [t.name for t in self.tasks]

    @property
    def head_tasks(self) -> list[TaskSpec]:
        """The tasks with a head and a label column of their own: the first `num_heads` of `tasks`."""
        return [t for t in self.tasks if not t.is_derived]

    @property
    def num_heads(self) -> int:
        return len(self.head_tasks)

    @property
    def has_cascades(self) -> bool:
        return any(t.is_derived for t in self.tasks)

    def cascade_paths(self) -> dict[str, list[str]]:
        """Derived task -> the head tasks whose probabilities it multiplies (root parent first, then down the chain).
        Call on a validated spec."""
        by_name = {t.name: t for t in self.tasks}
        out = {}
        for t in self.tasks:
            if t.is_derived:
                chain = [t.product_of[1]]
                while by_name[chain[0]].depends_on is not None and len(chain) <= len(self.tasks):  # cycles: validate
                    chain.insert(0, by_name[chain[0]].depends_on)
                out[t.name] = chain
        return out

    @property
    def loss_tasks(self) -> list[bool]:
        """Per task: does it train on its own labels (False: a cascade's child with child_loss: false)."""
        return [t.child_loss for t in self.tasks]

    @property
    def task_types(self) -> list[str]:
        """"binary" or "regression" per task, in task order."""
        return [t.type for t in self.tasks]

    @property
    def has_regression(self) -> bool:
        return any(t.is_regression for t in self.tasks)

    def task_type_signature(self) -> dict[str, dict[str, str]]:
        """What a checkpoint must agree on about task types: {} for all-binary specs without cascades (as before
        types existed), else each regression task's type and transform (its head predicts that scale) and each
        cascade child's parent (its head predicts a conditional)."""
        out = {}
        if self.has_regression:
            out["task_types"] = {t.name: f"regression/{t.transform}" for t in self.tasks if t.is_regression}
        if self.has_cascades:
            out["cascades"] = {t.name: t.depends_on for t in self.tasks if t.depends_on is not None}
        return out

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [f.name for f in self.dense]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_dense(self) -> int:
        return len(self.dense)

    def columns(self) -> list[str]:
        """Every column the reader projects, in a stable order, without repeats."""
        cols = [f.source for f in self.sparse] + [f.source for f in self.dense]
        tasks = self.head_tasks
        cols += [t.source for t in tasks] + [t.weight_column for t in tasks if t.weight_column]
        return list(dict.fromkeys(cols))

    def features_of_table(self, table: str) -> list[str]:
        return [f.name for f in self.sparse if f.table == table]

    # -- validation ----------------------------------------------------------------------
    def validate(self, where: Where) -> None:
        if not self.sparse:
            raise where.child("sparse").error("at least one sparse feature is required")
        if not self.tasks:
            raise where.child("tasks").error("at least one task is required")
        seen: dict[str, str] = {}
        for section, items in (("sparse", self.sparse), ("dense", self.dense), ("tasks", self.tasks)):
            for i, item in enumerate(items):
                if not item.name:
                    raise where.child(section).child(i).child("name").error("must not be empty")
                if item.name in seen and getattr(item, "is_derived", False):
                    parent, child = (list(item.product_of) + ["?", "?"])[:2]
                    raise where.child(section).error(
                        f"derived task {item.name!r} (the product of {parent!r} and {child!r}, which depends on it) "
                        f"has the name of another task (in {seen[item.name]}); set product_name on task {child!r}")
                if item.name in seen:
                    raise where.child(section).child(i).child("name").error(
                        f"duplicate name {item.name!r} (already used in {seen[item.name]})"
                    )
                seen[item.name] = section
        used = set()
        for i, f in enumerate(self.sparse):
            if f.table not in self.tables:
                raise where.child("sparse").child(i).child("table").error(
                    f"unknown table {f.table!r}; tables: {', '.join(sorted(self.tables))}"
                )
            used.add(f.table)
        unused = sorted(set(self.tables) - used)
        if unused:
            raise where.child("tables").child(unused[0]).error("table is not used by any sparse feature")
        sparse_cols = [f.source for f in self.sparse]
        for i, f in enumerate(self.sparse):
            if sparse_cols.count(f.source) > 1:
                raise where.child("sparse").child(i).error(f"column {f.source!r} is used by two sparse features")
        label_cols = [t.source for t in self.head_tasks]
        for i, t in enumerate(self.head_tasks):
            if label_cols.count(t.source) > 1:
                raise where.child("tasks").child(i).error(f"label column {t.source!r} is used by two tasks")
        self._validate_cascades(where)

    def _validate_cascades(self, where: Where) -> None:
        """Each depends_on names a binary task, without cycles; each derived task belongs to one child."""
        by_name = {t.name: t for t in self.head_tasks}
        for i, t in enumerate(self.tasks):
            if t.is_derived:
                parent, child = (t.product_of + [None, None])[:2]
                if len(t.product_of) != 2 or by_name.get(child) is None or by_name[child].depends_on != parent:
                    raise where.child("tasks").child(i).child("product_of").error(
                        f"derived task {t.name!r}: product_of {t.product_of} is not [parent, child] of a task with "
                        "depends_on (derived tasks are added by the framework; declare depends_on on the child)")
                continue
            if t.depends_on is None:
                continue
            at = where.child("tasks").child(i).child("depends_on")
            parent = by_name.get(t.depends_on)
            if parent is None:
                raise at.error(f"task {t.name!r} depends on unknown task {t.depends_on!r}; the spec's tasks are "
                               f"{', '.join(by_name)}")
            if parent.is_regression:
                raise at.error(f"task {t.name!r} depends on {parent.name!r}, a regression task; a cascade's parent "
                               "must be binary")
            chain, node = [t.name], parent
            while node is not None:
                if node.name in chain:
                    cycle = " -> ".join(chain[chain.index(node.name):] + [node.name])
                    raise at.error(f"task {t.name!r}: depends_on forms a cycle ({cycle})")
                chain.append(node.name)
                node = by_name.get(node.depends_on) if node.depends_on is not None else None

    def check_schema(self, schema: pa.Schema, source: str) -> None:
        """Raise ConfigError if a column is missing or of the wrong type in `source`'s schema."""
        names = set(schema.names)

        def field(col: str, role: str) -> pa.DataType:
            if col not in names:
                raise ConfigError(
                    f"{source}: column {col!r} ({role}) is missing; the file has: {', '.join(schema.names)}"
                )
            return schema.field(col).type

        for f in self.sparse:
            t = field(f.source, f"sparse feature {f.name!r}")
            is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
            item = t.value_type if is_list else t
            if _is_string(item) and not f.hashed and is_list == f.multi_valued:
                raise ConfigError(f"{source}: column {f.source!r} (sparse feature {f.name!r}) holds string ids, "
                                  "which are hashed into the table: set hashed: true")
            if f.multi_valued:
                ok = is_list and (pa.types.is_integer(item) or (f.hashed and _is_string(item)))
                expected = "a list of integers (or of strings, with hashed: true)"
            else:
                ok = pa.types.is_integer(t) or (f.hashed and _is_string(t))
                expected = "integers (or strings, with hashed: true)"
            if not ok:
                raise ConfigError(
                    f"{source}: column {f.source!r} (sparse feature {f.name!r}) has type {t}, expected {expected}"
                    + ("" if f.multi_valued else " (set multi_valued: true for list columns)")
                )
        for f in self.dense:
            t = field(f.source, f"dense feature {f.name!r}")
            if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)):
                raise ConfigError(f"{source}: column {f.source!r} (dense feature {f.name!r}) has type {t}, expected numbers")
        for task in self.head_tasks:
            t = field(task.source, f"label of task {task.name!r}")
            if task.is_regression:
                if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)):
                    raise ConfigError(f"{source}: column {task.source!r} (label of regression task {task.name!r}) has "
                                      f"type {t}, expected numbers (null = unlabelled)")
            elif not (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)):
                raise ConfigError(
                    f"{source}: column {task.source!r} (label of task {task.name!r}) has type {t}, "
                    "expected binary labels (0/1 integers, booleans or floats; null = unlabelled)"
                )
            if task.weight_column:
                t = field(task.weight_column, f"sample weight of task {task.name!r}")
                if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                    raise ConfigError(f"{source}: column {task.weight_column!r} (weight of task {task.name!r}) has type {t}, expected numbers")


def _is_string(t: pa.DataType) -> bool:
    """String or binary ids, plain or dictionary-encoded (the reader hashes them: data/arrow.py string_hashes)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


__all__ = ["FeatureSpec", "SparseFeature", "DenseFeature", "TaskSpec", "TableSpec"]
