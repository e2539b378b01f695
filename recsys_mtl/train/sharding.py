"""Sharding plan and DistributedModelParallel: planner by default, per-table overrides by config.

- Tables named in `sharding.tables` are forced to that sharding type; the
  others are left to TorchRec's planner (which may pick table-, row- or
  column-wise, all with the fused kernel so their optimizer runs in backward).
- `data_parallel` tables are replicated with the dense kernel: the dense
  optimizer trains them and their gradients are all-reduced like DDP's.
- Row-wise on CPU: the stock sharder lists it only for CUDA, so we use a
  sharder that also allows it on CPU (FBGEMM's CPU kernels handle it).
- Before planning, each forced table is checked against the memory one rank
  may use, so a table too large for its sharding fails with what to change.
- Mean pooling (TorchRec 1.6.1 and 1.8, measured): FBGEMM cannot mean-pool row-wise
  shards, so once a mean-pooled table is sharded row-wise or table-row-wise,
  TorchRec sum-pools it and divides the collection's output by each feature's
  length afterwards. That step resets the length to 1 only for sum-pooled
  features of row-wise and table-row-wise tables, so every multi-valued feature
  of a table sharded otherwise is divided too (a sum becomes a mean, a mean is
  divided twice). So unless the config forces a mean-pooled table row_wise,
  the planner keeps mean-pooled tables off the row-wise kinds and the step
  never runs; a config that does force one must shard every table with a
  multi-valued feature row-wise too (the planner is kept to the row-wise kinds
  for them, and forcing another is a ConfigError).
- The plan is reproducible: TorchRec's enumerator intersects Python sets of
  sharding types, so its options came in an order set by PYTHONHASHSEED and the
  planner broke ties between equally costed options differently in every
  process (the same config got table_wise in one run and column_wise in the
  next). `OrderedEnumerator` puts each table's options in a fixed order.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.constants import MIN_CW_DIM
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError
from torchrec.distributed.types import ShardingEnv, ShardingPlan, ShardingType
from torchrec.distributed.embedding_types import EmbeddingComputeKernel

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.config.loader import ConfigError
from recsys_mtl.config.train import EmbeddingOptimConfig, ShardingConfig

_SHARDING_TYPE = {
    "table_wise": ShardingType.TABLE_WISE.value,
    "row_wise": ShardingType.ROW_WISE.value,
    "column_wise": ShardingType.COLUMN_WISE.value,
    "data_parallel": ShardingType.DATA_PARALLEL.value,
}
# what the planner may choose for a table the config leaves open
_PLANNER_TYPES = [
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
]
_ROW_WISE_TYPES = [ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
_OFF_ROW_WISE_TYPES = [t for t in _PLANNER_TYPES if t not in _ROW_WISE_TYPES]
# the order the planner meets a table's options in: on equal cost, the simpler sharding wins
_PREFERENCE = {t: i for i, t in enumerate(_PLANNER_TYPES + [ShardingType.DATA_PARALLEL.value])}
_FUSED_OPTIMIZER = {
    "sgd": EmbOptimType.EXACT_SGD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
}


class EmbeddingBagCollectionSharderAnyDevice(EmbeddingBagCollectionSharder):
    """The stock sharder, plus row-wise (and table-row-wise) on CPU."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = list(super().sharding_types(compute_device_type))
        for extra in _ROW_WISE_TYPES:
            if extra not in types:
                types.append(extra)
        return types


class OrderedEnumerator(EmbeddingEnumerator):
    """TorchRec's enumerator with each table's options in a fixed order, not in set (hash) order."""

    def enumerate(self, module: nn.Module, sharders: list) -> list:
        options = super().enumerate(module, sharders)
        table_order: dict[str, int] = {}
        for option in options:
            table_order.setdefault(option.fqn, len(table_order))
        return sorted(options, key=lambda o: (table_order[o.fqn], _PREFERENCE.get(o.sharding_type, len(_PREFERENCE)),
                                              o.sharding_type, o.compute_kernel))


def fused_params(optim: EmbeddingOptimConfig) -> dict:
    params = {"optimizer": _FUSED_OPTIMIZER[optim.type], "learning_rate": optim.lr}
    if optim.type != "sgd":
        params["eps"] = optim.eps
    return params


def build_sharders(optim: EmbeddingOptimConfig) -> list[EmbeddingBagCollectionSharder]:
    return [EmbeddingBagCollectionSharderAnyDevice(fused_params=fused_params(optim))]


def memory_per_rank_bytes(config: ShardingConfig, device: torch.device) -> int:
    """Memory one rank may give to tables + optimizer state: the config's, else the device's."""
    if config.memory_per_rank_gb is not None:
        return int(config.memory_per_rank_gb * (1 << 30))
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return int(total // local)


def table_bytes(rows: int, dim: int, optimizer: str) -> int:
    """float32 weights plus optimizer state (row-wise Adagrad: one float a row; Adam: two a weight)."""
    state = {"sgd": 0, "adagrad": rows * dim, "rowwise_adagrad": rows, "adam": 2 * rows * dim}[optimizer]
    return 4 * (rows * dim + state)


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def multi_valued_tables(spec: FeatureSpec) -> dict[str, list[str]]:
    """table -> its multi-valued features, for the tables that have any."""
    out: dict[str, list[str]] = {}
    for f in spec.sparse:
        if f.multi_valued:
            out.setdefault(f.table, []).append(f.name)
    return out


def row_wise_mean_tables(spec: FeatureSpec, config: ShardingConfig) -> list[str]:
    """Mean-pooled tables the config forces row_wise: they turn on TorchRec's divide-after step (module doc)."""
    return [name for name, t in spec.tables.items() if t.pooling == "mean" and config.tables.get(name) == "row_wise"]


def _check_mean_pooling(spec: FeatureSpec, config: ShardingConfig) -> None:
    """ConfigError for a forced sharding TorchRec's divide-after step would pool wrongly (module doc)."""
    row_wise_mean = row_wise_mean_tables(spec, config)
    if not row_wise_mean:
        return
    multi = multi_valued_tables(spec)
    means = ", ".join(repr(t) for t in row_wise_mean)
    for table, choice in config.tables.items():
        if table in multi and choice != "row_wise":
            pooling = spec.tables[table].pooling
            raise ConfigError(
                f"sharding.tables.{table}: {choice} would divide the pooled {', '.join(multi[table])} "
                f"({pooling}-pooled in the spec) by their lengths{' a second time' * (pooling == 'mean')}: with "
                f"mean-pooled {means} forced row_wise, TorchRec mean-pools row-wise tables by dividing the "
                f"lookup's output by each feature's length afterwards, and that step also divides every "
                f"multi-valued feature of a table sharded otherwise. Shard {table!r} row_wise too (or leave it "
                f"to the planner), or shard {means} table_wise, column_wise or data_parallel (or leave "
                f"{'them' if len(row_wise_mean) > 1 else 'it'} to the planner, which keeps mean-pooled tables "
                f"off row-wise)."
            )


def column_wise_blocks(dim: int) -> tuple[int, int]:
    """(shards, columns each) of a column-wise table of `dim` columns, as TorchRec's planner cuts it: blocks of the
    smallest multiple of 4 from MIN_CW_DIM (128) up that divides `dim`, else one block of all columns."""
    block = next((b for b in range(MIN_CW_DIM, dim) if dim % b == 0 and b % 4 == 0), dim)
    return dim // block, block


def check_forced_sharding(spec: FeatureSpec, config: ShardingConfig, optimizer: str,
                          world_size: int, capacity: int, extra_columns: int = 0,
                          dense_optimizer: str = "adam") -> None:
    """Raise ConfigError for unknown table names, for forced shardings that TorchRec would pool wrongly
    (module doc: mean pooling) and for those that cannot fit one rank.

    A data_parallel table is trained by the dense optimizer (`dense_optimizer`), the others by `optimizer`.
    """
    for table in config.tables:
        if table not in spec.tables:
            raise ConfigError(
                f"sharding.tables.{table}: no table {table!r} in feature spec {spec.name!r}; "
                f"its tables are: {', '.join(spec.tables)}"
            )
    _check_mean_pooling(spec, config)
    for table, choice in config.tables.items():
        t = spec.tables[table]
        dim = t.embedding_dim + extra_columns
        table_optimizer = dense_optimizer if choice == "data_parallel" else optimizer
        full = table_bytes(t.num_embeddings, dim, table_optimizer)
        if choice in ("table_wise", "data_parallel"):
            per_rank = full
        elif choice == "row_wise":
            per_rank = table_bytes(-(-t.num_embeddings // world_size), dim, table_optimizer)
        else:  # column_wise: TorchRec's blocks, at best spread evenly over the ranks
            shards, block = column_wise_blocks(dim)
            per_rank = table_bytes(t.num_embeddings, block * -(-shards // min(world_size, shards)), table_optimizer)
        if per_rank > capacity:
            fixes = []
            if choice in ("table_wise", "data_parallel"):
                fixes.append("row_wise or column_wise (split over ranks)")
            elif choice == "column_wise" and shards < world_size:
                fixes.append(f"row_wise (TorchRec splits columns into blocks of at least {MIN_CW_DIM} that divide "
                             f"the {dim} columns: {shards} block(s) of {block} for {world_size} rank(s))")
            if not (choice == "column_wise" and shards <= world_size):  # else every block has a rank already
                fixes.append("more ranks")
            fixes.append(f"fewer rows (feature spec tables.{table}.num_embeddings, e.g. hashed ids)")
            raise ConfigError(
                f"sharding.tables.{table}: table {table!r} ({t.num_embeddings} x {dim}, "
                f"{_gib(full)} with {'dense ' * (choice == 'data_parallel')}{table_optimizer} state) "
                f"needs {_gib(per_rank)} per rank as {choice} over "
                f"{world_size} rank(s), but a rank has {_gib(capacity)} "
                f"(sharding.memory_per_rank_gb). Use " + ", or ".join(fixes) + "."
            )


def parameter_constraints(spec: FeatureSpec, config: ShardingConfig) -> dict[str, ParameterConstraints]:
    constraints = {}
    row_wise_mean = row_wise_mean_tables(spec, config)
    multi = multi_valued_tables(spec)
    for table in spec.tables:
        choice = config.tables.get(table)
        if choice is None:
            if row_wise_mean:  # TorchRec's divide-after step is on: multi-valued tables must be row-wise too
                types = _ROW_WISE_TYPES if table in multi else _PLANNER_TYPES
            else:  # mean-pooled tables off the row-wise kinds keep that step off
                types = _OFF_ROW_WISE_TYPES if spec.tables[table].pooling == "mean" else _PLANNER_TYPES
            constraints[table] = ParameterConstraints(
                sharding_types=types, compute_kernels=[EmbeddingComputeKernel.FUSED.value]
            )
        elif choice == "data_parallel":
            constraints[table] = ParameterConstraints(
                sharding_types=[_SHARDING_TYPE[choice]], compute_kernels=[EmbeddingComputeKernel.DENSE.value]
            )
        else:
            constraints[table] = ParameterConstraints(
                sharding_types=[_SHARDING_TYPE[choice]], compute_kernels=[EmbeddingComputeKernel.FUSED.value]
            )
    return constraints


def propose_plan(module: nn.Module, spec: FeatureSpec, config: ShardingConfig, sharders: list, world_size: int,
                 device: torch.device, batch_size: int, capacity: int) -> ShardingPlan:
    """TorchRec's plan for `world_size` ranks of `capacity` bytes each (no collectives; PlannerError if none)."""
    topology = Topology(
        world_size=world_size,
        compute_device=device.type,
        **({"hbm_cap": capacity} if device.type == "cuda" else {"ddr_cap": capacity}),
    )
    constraints = parameter_constraints(spec, config)
    planner = EmbeddingShardingPlanner(
        topology=topology, constraints=constraints, batch_size=batch_size,
        enumerator=OrderedEnumerator(topology=topology, batch_size=batch_size, constraints=constraints),
    )
    return planner.plan(module, sharders)


def plan_sharding(module: nn.Module, spec: FeatureSpec, config: ShardingConfig, optim: EmbeddingOptimConfig,
                  sharders: list, world_size: int, device: torch.device, batch_size: int,
                  extra_columns: int = 0, dense_optimizer: str = "adam") -> ShardingPlan:
    """Plan on every rank (the same plan in every process: `OrderedEnumerator`), fail together, then use
    rank 0's plan."""
    capacity = memory_per_rank_bytes(config, device)
    check_forced_sharding(spec, config, optim.type, world_size, capacity, extra_columns, dense_optimizer)
    error: str | None = None
    plan = None
    try:
        plan = propose_plan(module, spec, config, sharders, world_size, device, batch_size, capacity)
    except PlannerError as exc:
        forced = ", ".join(f"{k}: {v}" for k, v in config.tables.items()) or "none (planner's choice)"
        sizes = {name: table_bytes(t.num_embeddings, t.embedding_dim + extra_columns, optim.type)
                 for name, t in spec.tables.items()}
        largest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:3]
        total = sum(sizes.values())
        fix = (f"one rank holds every table ({_gib(total)} in all with {optim.type} state): raise "
               f"sharding.memory_per_rank_gb, make the largest tables smaller (hashed ids), or use more ranks"
               if world_size == 1 else
               f"force row_wise for the largest tables in sharding.tables, raise sharding.memory_per_rank_gb, or "
               f"use more ranks")
        error = (
            f"sharding: TorchRec's planner found no plan for {world_size} rank(s) with {_gib(capacity)} each "
            f"(forced: {forced}; largest tables: "
            + ", ".join(f"{name} {_gib(sizes[name])}" for name in largest)
            + f"). To fix it, {fix}. Planner said: {str(exc).splitlines()[0]}"
        )
    if world_size > 1:
        failed = torch.tensor([1 if error else 0], device=device)  # nccl reduces only device tensors
        dist.all_reduce(failed)
        if failed.item() and error is None:
            error = "sharding: another rank failed to plan (see its error)"
        box = [plan]
        if not error:
            dist.broadcast_object_list(box, src=0)
            plan = box[0]
    if error:
        raise ConfigError(error)
    return plan


def shard_model(module: nn.Module, spec: FeatureSpec, config: ShardingConfig, optim: EmbeddingOptimConfig,
                device: torch.device, batch_size: int, pg: dist.ProcessGroup | None = None,
                extra_columns: int = 0, dense_optimizer: str = "adam") -> DistributedModelParallel:
    """Plan and wrap `module` in DMP; dense parts are DDP-wrapped, tables sharded with fused optimizers.

    extra_columns: columns the model adds to every spec table (the wide part), and dense_optimizer: the
    optimizer of data_parallel tables, for the memory check.
    """
    pg = pg or dist.group.WORLD
    world_size = dist.get_world_size(pg)
    sharders = build_sharders(optim)
    plan = plan_sharding(module, spec, config, optim, sharders, world_size, device, batch_size, extra_columns,
                         dense_optimizer)
    return DistributedModelParallel(
        module=module,
        env=ShardingEnv.from_process_group(pg),
        device=device,
        plan=plan,
        sharders=sharders,
    )


def describe_plan(dmp: DistributedModelParallel) -> dict[str, str]:
    """table -> sharding type (for logs)."""
    out = {}
    for module_plan in dmp.plan.plan.values():
        for table, param in module_plan.items():  # type: ignore[union-attr]
            out[table] = f"{param.sharding_type}/{param.compute_kernel}"
    return out
