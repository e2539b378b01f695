"""The benchmark model and its plain equal-weights training step, shared by `bench train` and `bench weighting`.

A minimal TorchRec step: the DMP-sharded `MultiTaskModel` (tables fused with their
optimizer in backward), the dense optimizer, loss = sum of the masked per-task BCE
losses (equal weights), forward / backward / step on batches already in memory;
train.precision applies as in the trainer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn


class _EqualWeightsModule(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        from recsys_mtl.losses import masked_bce

        logits = self.model(batch.dense, batch.sparse)
        return masked_bce(logits, batch.labels, batch.label_mask).losses.sum()


def build_plain_step(config, spec, env, batches: Sequence) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running one equal-weights training step on the next batch (cycling).

    config: TrainConfig (model, sharding, optimizers, seed, batch size); spec: FeatureSpec; env: DistEnv.
    """
    from torchrec.optim.keyed import CombinedOptimizer
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from recsys_mtl.models import MultiTaskModel
    from recsys_mtl.models.multitask import wide_columns
    from recsys_mtl.train.sharding import shard_model
    from recsys_mtl.train.optimizers import set_precision
    from recsys_mtl.train.trainer import build_dense_optimizer

    torch.manual_seed(config.train.seed)
    model = MultiTaskModel(spec, config.model, seed=config.train.seed, device=env.device, embedding_device="meta")
    set_precision(model, config.train, env.device)  # train.precision, as the trainer applies it
    dmp = shard_model(_EqualWeightsModule(model), spec, config.sharding, config.optim.embedding, env.device,
                      config.data.batch_size, extra_columns=wide_columns(spec, config.model.wide))
    model.init_embeddings_(dmp.state_dict(), prefix="model.")
    dense = build_dense_optimizer(dict(in_backward_optimizer_filter(dmp.named_parameters())), config.optim.dense)
    opt = CombinedOptimizer([("embedding", dmp.fused_optimizer), ("dense", dense)])
    on_device = [b.to(env.device) for b in batches]
    cycle = itertools.cycle(on_device)

    def step() -> torch.Tensor:
        opt.zero_grad()
        loss = dmp(next(cycle))
        loss.backward()
        opt.step()
        return loss

    return step


def synthetic_batches(out: Path, tasks: int, batch_size: int, num_batches: int, table_scale: float, env, seed: int = 0):
    """Generate `num_batches` x `batch_size` synthetic rows with `tasks` tasks into `out`; (spec, batches)."""
    from recsys_mtl.config.features import FeatureSpec
    from recsys_mtl.data.folder import spec_file
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic
    from recsys_mtl.train.trainer import build_parquet_source

    rows = batch_size * num_batches
    data = generate_synthetic(out, SynthConfig(tasks=tasks, rows=rows, days=1, seed=seed, table_scale=table_scale,
                                               rows_per_file=max(rows, 1), row_group_size=max(rows, 1)))
    spec = FeatureSpec.load(spec_file(data))
    stream = build_parquet_source(str(data), spec, batch_size, env, seed=seed, shuffle=False, shuffle_buffer_rows=0,
                                  num_workers=0, drop_remainder=True)
    stream.set_epoch(0)
    return spec, [b for _, b in zip(range(num_batches), stream)]


__all__ = ["build_plain_step", "synthetic_batches"]


def bench_data(data: Path | None, tmp: Path, *, rows: int, tasks: int, table_scale: float) -> Path:
    """`data` if given, else synthetic data generated into `tmp/data` for this benchmark run."""
    if data is not None:
        return Path(data)
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    print(f"generating {rows:,} synthetic rows, {tasks} tasks (table scale {table_scale})", flush=True)
    return generate_synthetic(tmp / "data", SynthConfig(tasks=tasks, rows=rows, days=2, seed=0, table_scale=table_scale))
