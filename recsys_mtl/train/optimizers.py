"""Building the model and what trains it: seeds, the sharded model (the embedding optimizer is fused into its
tables by train/sharding.py), the dense optimizer, the weighting method and the learning-rate schedule over the
planned steps. Mixed into Trainer.
"""

from __future__ import annotations

import functools
import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torchrec.optim.clipping import GradientClipping, GradientClippingOptimizer
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys_mtl.config.loader import ConfigError
from recsys_mtl.config.train import DenseOptimConfig, TrainSection
from recsys_mtl.models import MultiTaskModel
from recsys_mtl.models.multitask import wide_columns
from recsys_mtl.train.schedule import LrSchedule
from recsys_mtl.train.sharding import describe_plan, shard_model
from recsys_mtl.train.train_module import MultiTaskTrainModule
from recsys_mtl.weighting import WeightingMethod, build_weighting

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)


def set_precision(model: MultiTaskModel, train: TrainSection, device: torch.device) -> None:
    """train.precision: bf16 autocast of the model's dense part; tf32 matmuls on CUDA (a process-wide flag, set
    for every training on CUDA so an earlier tf32 run in the same process does not leak into an fp32 one)."""
    model.autocast = (device.type, torch.bfloat16) if train.precision == "bf16" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = train.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = train.precision == "tf32"


def build_dense_optimizer(named_params: dict[str, torch.nn.Parameter], cfg: DenseOptimConfig) -> KeyedOptimizer:
    """One optimizer over the dense parameters; with `cfg.wide_lr`, the wide part's (`wide_dense`) in a
    second param group at that learning rate; with `cfg.clip_norm`, the gradient clipped to that global L2 norm
    first (TorchRec's GradientClippingOptimizer; its state_dict is the wrapped optimizer's, so checkpoints
    load with or without clipping)."""
    wide = {id(p) for name, p in named_params.items() if "wide_dense." in name} if cfg.wide_lr else set()

    def factory(params):
        groups = [{"params": [p for p in params if id(p) not in wide]}]
        if wide:
            groups.append({"params": [p for p in params if id(p) in wide], "lr": cfg.wide_lr})
        if cfg.type == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.type == "adagrad":
            return torch.optim.Adagrad(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    optimizer = KeyedOptimizerWrapper(named_params, factory)
    if cfg.clip_norm is None:
        return optimizer
    return GradientClippingOptimizer(optimizer, clipping=GradientClipping.NORM, max_gradient=cfg.clip_norm)


class TrainerOptimizers:
    """The trainer's model, optimizers, weighting method and learning-rate schedule, built from its config."""

    def _build_model_and_optimizers(self) -> None:
        config, tc = self.config, self.config.train
        # model: dense parts built identically on every rank from the seed; tables on meta until sharded
        self.weighting: WeightingMethod = self._build_weighting()
        self.model = MultiTaskModel(self.spec, config.model, seed=tc.seed, device=self.device, embedding_device="meta")
        set_precision(self.model, tc, self.device)
        module = MultiTaskTrainModule(self.model, self.weighting, self.env.world_size, dist.group.WORLD,
                                      compile_weighting=config.weighting.compile)
        self.dmp = shard_model(module, self.spec, config.sharding, config.optim.embedding, self.device,
                               config.data.batch_size, extra_columns=wide_columns(self.spec, config.model.wide),
                               dense_optimizer=config.optim.dense.type)
        self.model.init_embeddings_(self.dmp.state_dict(), prefix="model.")
        if self.env.is_main:
            log.info("sharding plan: %s", describe_plan(self.dmp))
        # after the model build so dropout streams differ per rank while parameters match
        seed_everything(tc.seed + 1_000_003 * self.env.rank)

        self.dense_optimizer = build_dense_optimizer(
            dict(in_backward_optimizer_filter(self.dmp.named_parameters())), config.optim.dense
        )
        self.optimizer = CombinedOptimizer([("embedding", self.dmp.fused_optimizer), ("dense", self.dense_optimizer)])

    def _build_weighting(self) -> WeightingMethod:
        wc = self.config.weighting
        try:
            weighting = build_weighting(wc.method, self.spec.num_tasks, **wc.args)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"weighting: cannot build {wc.method!r} with args {wc.args}: {exc}") from None
        return weighting.to(self.device)

    @functools.cached_property
    def planned_steps(self) -> int:
        """Steps of the whole training: train.epochs' batches, or train.max_steps if fewer (planned once)."""
        tc = self.config.train
        per_epoch = getattr(self.train_data, "batches_in_epoch", None)  # ParquetStream: each epoch's own count
        total = sum(map(per_epoch, range(tc.epochs))) if per_epoch else tc.epochs * len(self.train_data)
        return total if tc.max_steps is None else min(total, tc.max_steps)

    def _build_schedule(self) -> LrSchedule | None:
        cfg = self.config.optim.schedule
        if cfg.warmup_steps == 0 and cfg.decay == "none":
            return None
        return LrSchedule(self.optimizer, cfg, self.planned_steps)


__all__ = ["build_dense_optimizer", "seed_everything", "set_deterministic", "set_precision", "TrainerOptimizers"]
