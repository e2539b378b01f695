"""MultiTaskModel: feature spec + model config -> logits[B, T].

    sparse KJT -> EmbeddingBagCollection (one table per spec table, shared by
    its features) -> pooled [B, dim] per feature, read by key
    dense [B, D] -> dense tower MLP
    concat -> architecture (shared_bottom | mmoe | ple) -> [B, T, H]
    -> H task towers as one batched MLP -> H logits as one batched linear
    -> cascades: the derived product tasks' logits appended (recsys_mtl.models.cascade) -> T = H + D logits
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.models.architectures import architectures, build_architecture
from recsys_mtl.models.cascade import TaskCascade
from recsys_mtl.models.embedding_init import init_embedding_state_
from recsys_mtl.models.layers import MLP, BatchedLinear, BatchedMLP

if TYPE_CHECKING:  # models take the config's values; only config/ imports the registry
    from recsys_mtl.config.train import ModelConfig

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
#: model.embedding_dtype -> TorchRec's table data type
TABLE_DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}


def wide_columns(spec: FeatureSpec, wide: bool) -> int:
    """Extra columns per table row for the wide part: one per head, rounded up to a multiple of 4 (FBGEMM rows)."""
    return -(-spec.num_heads // 4) * 4 if wide else 0


def embedding_bag_configs(spec: FeatureSpec, wide: bool = False, dtype: str = "fp32") -> list[EmbeddingBagConfig]:
    """One EmbeddingBagConfig per spec table, listing every feature that reads it, stored as `dtype` (fp32|fp16)."""
    extra = wide_columns(spec, wide)
    return [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=table.embedding_dim + extra,
            num_embeddings=table.num_embeddings,
            feature_names=spec.features_of_table(name),
            pooling=_POOLING[table.pooling],
            data_type=TABLE_DATA_TYPES[dtype],
        )
        for name, table in spec.tables.items()
    ]


class MultiTaskModel(nn.Module):
    """Plain (unsharded) module; DistributedModelParallel shards its `ebc`.

    With `config.wide`, each table row is [deep embedding | one weight per task]:
    the deep columns feed the architecture, the per-task columns are summed over
    features into that task's logit (a logistic regression on the ids), times
    `config.wide_id_scale` for the tasks it lists.

    `config.feature_dropout` zeroes a feature's pooled row (deep and wide columns)
    for a random fraction of rows in training mode only, as if the id were unknown.

    embedding_device="meta" builds the tables without memory (DMP materialises
    only each rank's shards; call `init_embeddings_` on the sharded state).

    `autocast` (None: float32; the trainer sets ("cuda" or "cpu", torch.bfloat16) for train.precision bf16):
    the dense tower, architecture, task towers, heads and wide dense part run under autocast to that dtype on
    that device type; the embedding lookup does not, and the logits and penalty come out float32, so losses,
    weighting and metrics stay float32. (A device type, not read from the batch: the pipeline traces forward.)
    """

    autocast: tuple[str, torch.dtype] | None = None

    def __init__(self, spec: FeatureSpec, config: ModelConfig, *, seed: int = 0,
                 device: torch.device | str | None = None,
                 embedding_device: torch.device | str | None = None) -> None:
        super().__init__()
        from recsys_mtl.config.loader import ConfigError

        if config.architecture not in architectures():
            raise ConfigError(
                f"model.architecture: unknown architecture {config.architecture!r}; "
                f"set it to one of: {', '.join(sorted(architectures()))}"
            )
        self.spec = spec
        self.seed = seed
        self.sparse_names = spec.sparse_names
        self.num_tasks = spec.num_tasks  # outputs: the heads, then the cascades' derived tasks
        self.num_heads = spec.num_heads
        head_names = [t.name for t in spec.head_tasks]
        self.wide = config.wide
        for key in ("wide_l2_tasks", "wide_id_scale"):
            unknown = sorted(set(getattr(config, key)) - set(head_names))
            if unknown:
                from recsys_mtl.config.loader import ConfigError

                raise ConfigError(f"model.{key}: unknown task(s) {unknown}; the spec's tasks are "
                                  f"{', '.join(head_names)}" + (" (a cascade's derived task has no head and no wide "
                                                               "weights)" if spec.has_cascades else ""))
        l2 = [float(config.wide_l2_tasks.get(t, config.wide_l2)) for t in head_names]
        self.wide_l2 = any(l2)
        self.register_buffer("wide_l2_per_task", torch.tensor(l2, device=device or "cpu"), persistent=False)
        scale = [float(config.wide_id_scale.get(t, 1.0)) for t in head_names]
        self.register_buffer("wide_id_scale", torch.tensor(scale, device=device or "cpu")
                             if config.wide and config.wide_id_scale else None, persistent=False)
        unknown = sorted(set(config.feature_dropout) - set(self.sparse_names))
        if unknown:
            from recsys_mtl.config.loader import ConfigError

            raise ConfigError(f"model.feature_dropout: unknown sparse feature(s) {unknown}; the spec's sparse features "
                              f"are {', '.join(self.sparse_names)}")
        self.feature_dropout = {name: p for name, p in config.feature_dropout.items() if p > 0}
        self.deep_dims = [spec.tables[f.table].embedding_dim for f in spec.sparse]
        embedding_device = embedding_device if embedding_device is not None else device
        self.ebc = EmbeddingBagCollection(tables=embedding_bag_configs(spec, config.wide, config.embedding_dtype),
                                          device=torch.device(embedding_device or "cpu"))
        if self.ebc.embedding_bags[next(iter(spec.tables))].weight.device.type != "meta":
            self.init_embeddings_(self.state_dict(), prefix="")

        with torch.device(device or "cpu"):
            self.dense_tower = MLP(spec.num_dense, config.dense_tower, config.dropout) if spec.num_dense else None
            dense_out = self.dense_tower.out_dim if self.dense_tower is not None else 0
            emb_out = sum(spec.tables[f.table].embedding_dim for f in spec.sparse)
            args = config.architecture_args()
            try:
                self.architecture = build_architecture(config.architecture, emb_out + dense_out, self.num_heads, args,
                                                       config.dropout)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"model.args: cannot build {config.architecture!r} with {args}: {exc}") from None
            self.task_towers = BatchedMLP(self.num_heads, self.architecture.out_dim, config.task_tower, config.dropout)
            self.heads = BatchedLinear(self.num_heads, self.task_towers.out_dim, 1)
            self.wide_dense = nn.Linear(spec.num_dense, self.num_heads) if config.wide and spec.num_dense else None
            if self.wide_dense is not None:  # the wide part starts at 0, like the wide id columns (a logistic regression)
                nn.init.zeros_(self.wide_dense.weight)
                nn.init.zeros_(self.wide_dense.bias)
        self.cascade = TaskCascade(head_names, spec.cascade_paths(), device) if spec.has_cascades else None

    def _drop_features(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training only: zero each dropped feature's pooled row for a Bernoulli(p) subset of rows (no rescaling:
        a dropped row looks like an unknown id, which is what evaluation meets for a new user or item)."""
        pooled = {name: pooled[name] for name in self.sparse_names}  # a new dict: torch.fx traces `pooled` as a Proxy
        for name, p in self.feature_dropout.items():
            x = pooled[name]
            keep = torch.rand_like(x[:, :1]) >= p
            pooled[name] = x * keep.to(x.dtype)
        return pooled

    @torch.no_grad()
    def set_head_bias_from_rates_(self, rates: torch.Tensor) -> None:
        """`rates` [T]: each task's mean label. A binary head starts at its base rate p (bias log(p / (1 - p))), a
        regression head at the mean of its transformed label (the prior's analogue: the best constant under MSE).
        A cascade's child has its rate over parent-positive rows (its labelled ones): the conditional's prior."""
        means = rates.to(self.heads.bias)[: self.num_heads]
        p = means.clamp(1e-4, 1 - 1e-4)
        regression = torch.tensor([t.is_regression for t in self.spec.head_tasks], device=means.device)
        bias = torch.where(regression, means, torch.log(p / (1 - p)))
        self.heads.bias.copy_(bias.view_as(self.heads.bias))

    @torch.no_grad()
    def zero_head_bias_(self) -> None:
        """Every head starts at 0 (p = 0.5 for binary tasks), instead of the layer's random init."""
        self.heads.bias.zero_()

    def table_state_keys(self, prefix: str) -> dict[str, tuple[int, int, int | None]]:
        """state_dict key of each table's weight -> (table index, num_embeddings, first wide column)."""
        return {
            f"{prefix}ebc.embedding_bags.{name}.weight": (i, table.num_embeddings,
                                                           table.embedding_dim if self.wide else None)
            for i, (name, table) in enumerate(self.spec.tables.items())
        }

    def init_embeddings_(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        """Deterministic, sharding-independent table init, written into `state` (sharded or not)."""
        init_embedding_state_(state, self.table_state_keys(prefix), self.seed)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.logits_and_wide_l2(dense, sparse)[0]

    def logits_and_wide_l2(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, T], wide_l2 penalty [T]): per task, `wide_l2` times the mean over rows of the squared wide id
        weights looked up (0 without it; 0 for derived tasks, which have no weights of their own). Training adds
        the penalty of the tasks it trains to the loss; evaluation needs only the logits."""
        pooled = self.ebc(sparse).to_dict()  # by key: column order changes after sharding
        if self.training and self.feature_dropout:
            pooled = self._drop_features(pooled)
        pooled = {name: pooled[name].float() for name in self.sparse_names}  # fp16 tables: float32 from here on
        if self.autocast is None:
            return self._dense_part(dense, pooled)
        with torch.autocast(self.autocast[0], dtype=self.autocast[1]):
            logits, penalty = self._dense_part(dense, pooled)
        return logits.float(), penalty.float()

    def _dense_part(self, dense: torch.Tensor, pooled: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        penalty = None
        if self.wide:
            parts = [pooled[name][:, :dim] for name, dim in zip(self.sparse_names, self.deep_dims)]
            wide_ids = torch.stack(
                [pooled[name][:, dim : dim + self.num_heads] for name, dim in zip(self.sparse_names, self.deep_dims)]
            )  # [F, B, H]
            if self.wide_l2:
                penalty = self.wide_l2_per_task * wide_ids.square().sum(dim=0).mean(dim=0)
            wide = wide_ids.sum(dim=0)
            if self.wide_id_scale is not None:
                wide = wide * self.wide_id_scale
            if self.wide_dense is not None:
                wide = wide + self.wide_dense(dense)
        else:
            parts = [pooled[name] for name in self.sparse_names]
        if self.dense_tower is not None:
            parts.append(self.dense_tower(dense))
        x = torch.cat(parts, dim=1)
        h = self.task_towers(self.architecture(x))  # [B, T, H]
        logits = self.heads(h).squeeze(-1)  # [B, H]
        if self.wide:
            logits = logits + wide
        if penalty is None:
            penalty = logits.new_zeros(self.num_heads)
        if self.cascade is not None:
            logits = self.cascade(logits)
            penalty = torch.cat([penalty, penalty.new_zeros(self.num_tasks - self.num_heads)])
        return logits, penalty
