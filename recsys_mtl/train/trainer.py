"""The training loop: DMP model, fused embedding optimizer + dense optimizer, TrainPipelineSparseDist.

    trainer = Trainer(TrainConfig.load("configs/kuairand.yaml"))
    result = trainer.fit()

Per step the pipeline runs: batch copy -> sparse input dist (overlapped with
the previous step) -> forward (model, masked BCE, all-reduced L[T], weighting)
-> one backward (embedding optimizer fused into it) -> dense optimizer step.
Rank 0 appends every step's losses to `<output_dir>/train_log.jsonl` (`loss` is the weighted data loss
sum(w_t L_t), without the wide_l2 penalty), shows its progress (train/progress.py), and logs one line per evaluation.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.config.loader import ConfigError, flatten, to_dict, to_yaml
from recsys_mtl.config.train import DenseOptimConfig, TrainConfig
from recsys_mtl.data.batch import Batch
from recsys_mtl.data.errors import DataError
from recsys_mtl.models import MultiTaskModel
from recsys_mtl.models.multitask import wide_columns
from recsys_mtl.train.checkpoint import (CHECKPOINTS_DIR, CONFIG_FILE, METRICS_KEY, RNG_KEY, SPEC_FILE,
                                        CheckpointManager, pack, rng_state, set_rng_state, unpack)
from recsys_mtl.train.distributed import DistEnv, computed_on_rank0, init_distributed
from recsys_mtl.train.interrupt import Stopped, StopSignals
from recsys_mtl.train.evaluation import eval_statistics, format_eval_line, metrics_by_task
from recsys_mtl.train.lock import OutputDirLock
from recsys_mtl.train.progress import Progress
from recsys_mtl.train.schedule import LrSchedule
from recsys_mtl.train.sharding import describe_plan, shard_model
from recsys_mtl.train.train_module import MultiTaskTrainModule
from recsys_mtl.weighting import WeightingMethod, build_weighting

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"


class BatchSource(Protocol):
    """What the trainer needs from a reader (ParquetStream implements it)."""

    def set_epoch(self, epoch: int) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def position_after(self, num_batches_consumed: int) -> dict: ...


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trainer stops before it checkpoints such a model."""

    exit_code = 1  # the CLI prints it as one line (not bad input: not 2)


class TrainerCallback:
    """Hooks for tracking; called on rank 0 only. Override what you need."""

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_log(self, trainer: "Trainer", records: list[dict[str, Any]]) -> None: ...
    def on_eval(self, trainer: "Trainer", step: int, epoch: int, metrics: dict[str, dict[str, float]]) -> None: ...
    def on_train_metrics(self, trainer: "Trainer", step: int, metrics: dict[str, torch.Tensor]) -> None:
        """Streaming per-task metrics ({"ne": [T], "ne_lifetime": [T], ...}, recsys_mtl.metrics.streaming)."""
    def on_train_end(self, trainer: "Trainer", result: "TrainResult") -> None: ...
    def on_train_error(self, trainer: "Trainer", exc: BaseException) -> None:
        """`fit` is raising `exc` (an error, Ctrl-C or SIGTERM); called before it propagates."""


@dataclasses.dataclass
class TrainResult:
    steps: int
    epochs_completed: int
    samples_per_second: float
    last_loss: float
    eval_metrics: dict[str, dict[str, float]] | None
    trained_steps: int = 0  # steps this fit() trained: 0 when it re-ran a finished training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)


def build_dense_optimizer(named_params: dict[str, torch.nn.Parameter], cfg: DenseOptimConfig) -> KeyedOptimizerWrapper:
    """One optimizer over the dense parameters; with `cfg.wide_lr`, the wide part's (`wide_dense`) in a
    second param group at that learning rate."""
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

    return KeyedOptimizerWrapper(named_params, factory)


def model_signature(spec: FeatureSpec, config: TrainConfig) -> dict[str, Any]:
    """What must match for a checkpoint to load: table shapes, features, tasks, architecture, optimizers."""
    return {
        "tables": {name: [t.num_embeddings, t.embedding_dim] for name, t in spec.tables.items()},
        "sparse_features": spec.sparse_names,
        "dense_features": spec.dense_names,
        "tasks": spec.task_names,
        # wide_l2 and feature_dropout act in training only, not on the model's shape or output: a checkpoint
        # trained with other values (or before they existed) loads. An empty per-task map (wide_id_scale: {})
        # is its feature off, the same model as a checkpoint made before the map existed: it is left out
        "model": {k: v for k, v in to_dict(config.model).items()
                  if k not in ("wide_l2", "wide_l2_tasks", "feature_dropout") and v != {}},
        "optim": {"embedding": config.optim.embedding.type, "dense": config.optim.dense.type},
        "weighting": config.weighting.method,
    }


def build_parquet_source(path: str, spec: FeatureSpec, batch_size: int, env: DistEnv, *, seed: int,
                         shuffle: bool, shuffle_buffer_rows: int, num_workers: int, drop_remainder: bool) -> BatchSource:
    from recsys_mtl.data.stream import ParquetStream

    return ParquetStream(path, spec, batch_size, rank=env.rank, world_size=env.world_size, num_workers=num_workers,
                         seed=seed, shuffle=shuffle, shuffle_buffer_rows=shuffle_buffer_rows,
                         drop_remainder=drop_remainder, pin_memory=env.device.type == "cuda")


def changed_settings(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each flattened config value that differs (none for checkpoints without one);
    train.checkpoint.resume is how a resume is asked for, not a change of the training. A setting newer than
    the checkpoint counts only if it is not at its default (the checkpoint's code behaved as the default)."""
    if saved is None:
        return []
    keys = sorted((set(saved) | set(current)) - {"train.checkpoint.resume"})
    return [f"{key}: {saved.get(key, '(unset)')} -> {current.get(key, '(unset)')}"
            for key in keys if saved.get(key) != current.get(key)
            and not (key not in saved and current.get(key) == _default_setting(key))]


def _default_setting(key: str) -> Any:
    """The default of a dotted TrainConfig setting (`train.checkpoint.at_end` -> True), or a sentinel if none."""
    import typing

    cls: Any = TrainConfig
    missing = object()
    for i, part in enumerate(parts := key.split(".")):
        field = {f.name: f for f in dataclasses.fields(cls)}.get(part) if dataclasses.is_dataclass(cls) else None
        if field is None:
            return missing
        if i == len(parts) - 1:
            if field.default is not dataclasses.MISSING:
                return field.default
            return field.default_factory() if field.default_factory is not dataclasses.MISSING else missing
        cls = typing.get_type_hints(cls)[part]
    return missing


class Trainer:
    """Builds everything from a TrainConfig; `fit()` trains, evaluates, checkpoints and resumes.

    train_data / eval_data: any BatchSource (default: ParquetStream over the
    config's paths, sharded by rank). spec: defaults to the config's spec file.
    """

    def __init__(self, config: TrainConfig, *, spec: FeatureSpec | None = None,
                 train_data: BatchSource | None = None, eval_data: BatchSource | None = None,
                 env: DistEnv | None = None, callbacks: list[TrainerCallback] | None = None) -> None:
        self.config = config
        self.env = env or init_distributed(config.train.device)
        self.device = self.env.device
        self.spec = spec or FeatureSpec.load(config.data.spec)
        self.callbacks = callbacks or []
        self.output_dir = Path(config.train.output_dir)
        tc = config.train
        set_deterministic(tc.deterministic)
        seed_everything(tc.seed)

        # model: dense parts built identically on every rank from the seed; tables on meta until sharded
        self.weighting: WeightingMethod = self._build_weighting()
        self.model = MultiTaskModel(self.spec, config.model, seed=tc.seed, device=self.device, embedding_device="meta")
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
        self.pipeline = TrainPipelineSparseDist(self.dmp, self.optimizer, self.device, execute_all_batches=True)

        self.train_data = train_data or self._default_source(config.data.train_path, train=True)
        self.eval_data = eval_data
        if self.eval_data is None and config.data.eval_path:
            self.eval_data = self._default_source(config.data.eval_path, train=False)
            if getattr(self.eval_data, "num_rows", None) == 0:  # found now, not by the evaluation after the whole training
                raise DataError(f"data.eval_path {config.data.eval_path}: the eval set has no rows; point it at "
                                "data with labelled rows, or set it to null to train without evaluation")
        self.schedule = self._build_schedule()  # after train_data: its length plans the decay

        ckpt_dir = Path(tc.checkpoint.dir) if tc.checkpoint.dir else self.output_dir / CHECKPOINTS_DIR
        self.checkpoints = CheckpointManager(ckpt_dir, keep=tc.checkpoint.keep, rank=self.env.rank,
                                             world_size=self.env.world_size)
        self.signature = model_signature(self.spec, config)
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self._steps_in_epoch = 0  # len(train_data) of the epoch being trained, for the eval line
        self._resume_position: dict | None = None
        #: the step this process resumed from a checkpoint at (set by fit), None for a fresh start
        self.resumed_from_step: int | None = None
        self._saved_step = -1
        self._warned_dropped = False
        self._pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        self.last_eval: dict[str, dict[str, float]] | None = None
        self._evaluated_at = -1  # the step of last_eval
        self.last_loss = float("nan")
        self.train_metrics = self._build_train_metrics()
        self.task_epochs = self._task_epochs()

    # -- construction helpers ----------------------------------------------------------------
    def _build_weighting(self) -> WeightingMethod:
        wc = self.config.weighting
        try:
            weighting = build_weighting(wc.method, self.spec.num_tasks, **wc.args)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"weighting: cannot build {wc.method!r} with args {wc.args}: {exc}") from None
        return weighting.to(self.device)

    def _task_epochs(self) -> torch.Tensor:
        """[T] epochs each task's labels train on (train.task_epochs, else train.epochs)."""
        tc = self.config.train
        unknown = sorted(set(tc.task_epochs) - set(self.spec.task_names))
        if unknown:
            raise ConfigError(f"train.task_epochs: unknown task(s) {unknown}; the spec's tasks are "
                              f"{', '.join(self.spec.task_names)}")
        return torch.tensor([tc.task_epochs.get(t, tc.epochs) for t in self.spec.task_names])

    def _epoch_label_mask(self) -> torch.Tensor | None:
        """[T] bool of the tasks still training this epoch (train.task_epochs), or None when all are."""
        training = self.task_epochs > self.epoch
        return None if bool(training.all()) else training

    def _build_train_metrics(self):
        """TorchRec streaming metrics on every rank (their compute is a collective), or None."""
        tr = self.config.tracking
        if not (tr.enabled and tr.train_metrics):
            return None
        from recsys_mtl.metrics.streaming import StreamingTaskMetrics

        global_batch = self.config.data.batch_size * self.env.world_size
        return StreamingTaskMetrics(
            self.spec.task_names, self.config.data.batch_size, window_rows=max(tr.train_metrics_window_rows, global_batch),
            auc_window_rows=max(tr.train_metrics_auc_window_rows, global_batch), world_size=self.env.world_size,
            rank=self.env.rank, process_group=dist.group.WORLD, device=self.device)

    def _report_train_metrics(self) -> None:
        values = self.train_metrics.compute()
        if self.env.is_main:
            for cb in self.callbacks:
                cb.on_train_metrics(self, self.step, values)

    def _default_source(self, path: str, train: bool) -> BatchSource:
        d = self.config.data
        return build_parquet_source(
            path, self.spec, d.batch_size if train else (d.eval_batch_size or d.batch_size), self.env,
            seed=self.config.train.seed, shuffle=d.shuffle and train,
            shuffle_buffer_rows=d.shuffle_buffer_rows if train else 0, num_workers=d.num_workers,
            drop_remainder=train,
        )

    @property
    def module(self) -> MultiTaskTrainModule:
        return self.dmp.module  # type: ignore[return-value]

    # -- checkpoints -------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds. The objects are the same on every rank (DCP writes one rank's copy of each):
        the RNG states and the streaming metrics' states are one key each, a list by rank, gathered at save."""
        return {
            "model": self.dmp.state_dict(),
            "optim": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "train_state": b"",
            RNG_KEY: b"",
            METRICS_KEY: b"",
        }

    def save_checkpoint(self) -> Path:
        state = self._checkpoint_state()
        position = self.train_data.position_after(self.step_in_epoch) if self.step_in_epoch else None
        state["train_state"] = pack({
            "step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "data": position,
            "world_size": self.env.world_size,
            # a re-run of a finished training resumes here: it reports this evaluation instead of logging a second one
            "eval": (self.step, self.last_eval) if self._evaluated_at == self.step else None,
            "config": flatten(self.config),  # a resume lists what changed since (tracked or not)
        })
        local = (rng_state(), self.train_metrics.state_dict() if self.train_metrics is not None else None)
        per_rank = [local]
        if self.env.world_size > 1:  # equal on every rank: DCP writes one rank's copy of a bytes object
            per_rank = [None] * self.env.world_size
            dist.all_gather_object(per_rank, local)
        state[RNG_KEY] = pack([rng for rng, _ in per_rank])
        state[METRICS_KEY] = pack([metrics for _, metrics in per_rank])
        path = self.checkpoints.save(self.step, state, self.signature, files=self._self_description)
        self._saved_step = self.step
        if self.env.is_main:
            log.info("checkpoint step %d saved to %s", self.step, path)
        return path

    @functools.cached_property
    def _self_description(self) -> dict[str, str]:
        """The resolved config and the feature spec, saved in every checkpoint (rendered once per run):
        `recsys-mtl evaluate` loads a checkpoint without being told which config (and `--set` overrides) it
        was trained with."""
        return {CONFIG_FILE: to_yaml(self.config), SPEC_FILE: to_yaml(self.spec)}

    def maybe_resume(self) -> bool:
        path = self.checkpoints.latest() if self.config.train.checkpoint.resume else None
        if path is None:
            return False
        self.checkpoints.check_signature(path, self.signature)
        train_state = self.checkpoints.read_object(path, "train_state")  # checked before the tensors load
        if train_state["world_size"] != self.env.world_size:
            raise ConfigError(
                f"checkpoint {path} was written by {train_state['world_size']} process(es) and this run has "
                f"{self.env.world_size}: the data position is per rank. Resume with --nproc "
                f"{train_state['world_size']}, or set train.checkpoint.resume: false."
            )
        self.dense_optimizer.init_state()  # Adam's state is lazy; DCP loads in place
        state = self._checkpoint_state()
        legacy_rng = f"rng_rank{self.env.rank}"  # checkpoints from before RNG_KEY: one key per rank
        saved = self.checkpoints.top_level_keys(path)
        if RNG_KEY not in saved:
            state[legacy_rng] = state.pop(RNG_KEY)
        if METRICS_KEY not in saved:  # checkpoints from before METRICS_KEY
            del state[METRICS_KEY]
        self.checkpoints.load(path, state, self.signature)
        self.dmp.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.weighting.load_state_dict(state["weighting"])
        set_rng_state(unpack(state[legacy_rng]) if legacy_rng in state else unpack(state[RNG_KEY])[self.env.rank])
        metrics = unpack(state[METRICS_KEY])[self.env.rank] if METRICS_KEY in state else None
        if self.train_metrics is not None and metrics is not None:  # else its lifetime values start here
            self.train_metrics.load_state_dict(metrics)
        self.step, self.epoch, self.step_in_epoch = train_state["step"], train_state["epoch"], train_state["step_in_epoch"]
        self._resume_position = train_state["data"]
        self._saved_step = self.step
        if train_state.get("eval") and train_state["eval"][0] == self.step:  # absent from older checkpoints
            self._evaluated_at, self.last_eval = train_state["eval"]
        if self.env.is_main:
            self._truncate_train_log(self.step)
            log.info("resumed from %s at step %d (%d epoch(s) done, then %d batch(es) of epoch %d/%d)", path,
                     self.step, self.epoch, self.step_in_epoch, self.epoch + 1, self.config.train.epochs)
            changed = changed_settings(train_state.get("config"), flatten(self.config))
            if changed:
                log.warning("resumed with %d setting(s) changed since that checkpoint: %s", len(changed),
                            "; ".join(changed))
        return True

    def warm_start(self, source: str | Path) -> None:
        """Seed a fresh run from another run's model: weights, both optimizers' state and the
        weighting state; the step, data position and RNG start fresh."""
        from recsys_mtl.evaluate.loading import CHECKPOINT_DIR

        path = Path(source)
        for sub in (CHECKPOINT_DIR, CHECKPOINTS_DIR):  # a model directory, or a run's output_dir
            if (path / sub).is_dir():
                path = path / sub
                break
        if not CheckpointManager.is_complete(path):
            latest = CheckpointManager(path).latest() if path.is_dir() else None
            if latest is None:
                raise ConfigError(f"train.init_from: {source} is not a model directory, a run's output_dir, a "
                                  "checkpoints folder or a checkpoint (none with a complete checkpoint)")
            path = latest
        self.dense_optimizer.init_state()
        state = self._checkpoint_state()
        del state["train_state"], state[RNG_KEY], state[METRICS_KEY]
        self.checkpoints.load(path, state, self.signature, advice=(
            "train.init_from warm-starts a model of the same shape, optimizers and weighting method: make those "
            f"settings match the source run's ({path / CONFIG_FILE}, or the run's config.yaml), or set "
            "train.init_from: null to start from scratch."))
        self.dmp.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.weighting.load_state_dict(state["weighting"])
        if self.env.is_main:
            (self.output_dir / TRAIN_LOG).unlink(missing_ok=True)
            log.info("warm start from %s", path)

    def init_head_bias(self, num_batches: int = 16) -> None:
        """Set each head's bias to its task's label rate over the first batches of epoch 0 (all ranks)."""
        positives = torch.zeros(self.spec.num_tasks, dtype=torch.float64)
        labelled = torch.zeros(self.spec.num_tasks, dtype=torch.float64)
        self.train_data.set_epoch(0)
        self.train_data.load_state_dict(self.train_data.position_after(0))
        for batch in itertools.islice(iter(self.train_data), min(num_batches, len(self.train_data))):
            positives += (batch.labels * batch.label_mask).sum(0).double().cpu()
            labelled += batch.label_mask.sum(0).double().cpu()
        self.train_data.load_state_dict(self.train_data.position_after(0))
        if self.env.world_size > 1:
            stats = torch.cat([positives, labelled]).to(self.device)
            dist.all_reduce(stats)
            positives, labelled = stats.cpu().split(self.spec.num_tasks)
        rates = torch.where(labelled > 0, positives / labelled.clamp(min=1), torch.full_like(labelled, 0.5))
        self.module.model.set_head_bias_from_rates_(rates.float())

    # -- logging -----------------------------------------------------------------------------
    def _truncate_train_log(self, step: int) -> None:
        path = self.output_dir / TRAIN_LOG
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    def _flush_records(self) -> list[dict[str, Any]]:
        """One host sync for the whole window: stack the pending step tensors and write them out."""
        if not self._pending:
            return []
        losses = torch.stack([p[2] for p in self._pending]).cpu()
        weights = torch.stack([p[3] for p in self._pending]).cpu()
        totals = (losses * weights).sum(dim=1)
        records = [
            {"step": s, "epoch": e, "loss": float(totals[i]), "losses": losses[i].tolist(), "weights": weights[i].tolist()}
            for i, (s, e, _, _) in enumerate(self._pending)
        ]
        self._pending.clear()
        finite = torch.isfinite(totals)
        diverged = None if bool(finite.all()) else int((~finite).nonzero()[0])
        if diverged is not None:
            records = records[:diverged + 1]  # the log ends at the first non-finite step
        self.last_loss = records[-1]["loss"]
        if self.env.is_main:
            with open(self.output_dir / TRAIN_LOG, "a") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
            for cb in self.callbacks:
                cb.on_log(self, records)
        if diverged is not None:  # the losses are global: every rank stops here
            self._diverged(records[-1])
        return records

    def _diverged(self, record: dict[str, Any]) -> None:
        """Found where the step records are read (every train.log_every steps, and before each checkpoint)."""
        bad = [name for name, v in zip(self.spec.task_names, record["losses"]) if not np.isfinite(v)]
        saved = (f"the newest checkpoint, step {self._saved_step}, is from before it" if self._saved_step > 0
                 else "no checkpoint was written")
        raise TrainingDiverged(
            f"the training loss is {record['loss']} at step {record['step']} (non-finite task losses: "
            f"{', '.join(bad) or 'none; a weight is not finite'}), found at step {self.step}; training stopped and "
            f"{saved}. Lower the learning rates (optim.dense.lr, optim.embedding.lr) or look for extreme values in "
            "the data, then resume or start again")

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self) -> dict[str, dict[str, float]] | None:
        if self.eval_data is None:
            return None
        self.pipeline.detach()
        self.dmp.eval()
        try:
            batch_size = self.config.data.eval_batch_size or self.config.data.batch_size
            self.eval_data.set_epoch(0)
            self.eval_data.load_state_dict(self.eval_data.position_after(0))
            statistics = eval_statistics(self.module.model, self.eval_data, self.spec, batch_size, self.device,
                                         self.env.world_size)
        finally:
            self.dmp.train()
            self._reattach()
        # all-reduced statistics: every rank computes the same last_eval (it goes into the checkpoint)
        metrics = metrics_by_task(statistics, self.spec.task_names)
        self.last_eval, self._evaluated_at = metrics, self.step
        if self.env.is_main:
            epochs_done = self.epoch + (self.step_in_epoch / self._steps_in_epoch if self._steps_in_epoch else 0)
            log.info(format_eval_line(self.step, epochs_done, self.config.train.epochs, metrics))
            for cb in self.callbacks:
                cb.on_eval(self, self.step, self.epoch, metrics)
        return metrics

    def _reattach(self) -> None:
        """Give the model back to the pipeline without re-running input dist for in-flight batches."""
        try:
            self.pipeline.attach(self.dmp, sparse_dist=False)
        except TypeError:  # TorchRec releases whose attach() has no sparse_dist argument
            self.pipeline.attach(self.dmp)

    @torch.no_grad()
    def _post_step_losses(self, batch: Batch) -> None:
        """Same batch's losses after the optimizer step, for weighting methods that ask for them."""
        self.pipeline.detach()
        try:
            batch = batch.to(self.device)
            logits = self.module.model(batch.dense, batch.sparse)
            losses, present = self.module.task_loss.global_losses(logits, batch.labels, batch.label_mask,
                                                                  batch.sample_weights)
        finally:
            self._reattach()
        self.weighting.post_step(losses, present)

    # -- training ----------------------------------------------------------------------------
    def _batches(self, remaining: int, keep: collections.deque | None) -> Iterator[Batch]:
        training = self._epoch_label_mask()  # one epoch per call: tasks past their task_epochs lose their labels
        for batch in itertools.islice(iter(self.train_data), remaining):
            if training is not None:
                batch = dataclasses.replace(batch, label_mask=batch.label_mask & training.to(batch.label_mask.device))
            if keep is not None:
                keep.append(batch)
            yield batch

    def fit(self) -> TrainResult:
        """Train (or resume) to the end; rank 0 holds the output_dir's lock meanwhile (train/lock.py)."""
        with contextlib.ExitStack() as cleanup:
            def lock() -> None:
                cleanup.enter_context(OutputDirLock(self.output_dir))

            computed_on_rank0(lock, self.env.world_size)  # in use: every rank stops with rank 0's error
            try:
                return self._fit(cleanup)
            except BaseException as exc:
                if self.env.is_main:
                    for cb in self.callbacks:
                        hook = getattr(cb, "on_train_error", None)  # callbacks written before the hook lack it
                        try:
                            if hook is not None:
                                hook(self, exc)
                        except Exception:  # noqa: BLE001 - the training's own error is the one to raise
                            log.exception("callback %s failed while the training stopped", type(cb).__name__)
                raise

    def _fit(self, cleanup: contextlib.ExitStack) -> TrainResult:
        tc = self.config.train
        resumed = self.maybe_resume()
        self.resumed_from_step = self.step if resumed else None
        if not resumed:
            earlier = self.checkpoints.start_fresh()
            if earlier and self.env.is_main:
                log.warning("%s holds %d checkpoint(s) of an earlier run (newest %s); this run starts fresh "
                            "(train.checkpoint.resume: false) and replaces them when it saves its first checkpoint",
                            self.checkpoints.directory, len(earlier), earlier[-1].name)
        if not resumed and tc.init_from:
            self.warm_start(tc.init_from)
        elif not resumed:
            if self.config.model.head_bias == "prior":
                self.init_head_bias()
            else:  # "zero": p = 0.5, instead of the layer's random init
                self.module.model.set_head_bias_from_rates_(torch.full((self.spec.num_tasks,), 0.5))
            if self.env.is_main:
                (self.output_dir / TRAIN_LOG).unlink(missing_ok=True)
        def start_callbacks() -> None:  # rank 0 only; a failure (e.g. the tracking store) stops every rank
            for cb in self.callbacks:
                cb.on_train_start(self)

        computed_on_rank0(start_callbacks, self.env.world_size)
        samples_per_step = self.config.data.batch_size * self.env.world_size
        post_step = self.weighting.needs_post_step_losses
        progress = self._progress(cleanup)
        start_time, start_step = time.perf_counter(), self.step
        if resumed and self._finished() and self.env.is_main:
            log.info("training already finished at step %d (epoch %d): nothing to train%s", self.step, self.epoch,
                     "; its last evaluation is in the checkpoint" if self._evaluated_at == self.step else "")

        stop = cleanup.enter_context(StopSignals(graceful=self.env.world_size == 1))  # Ctrl-C, SIGTERM
        while not self._finished():
            if self._resume_position is not None:
                self.train_data.load_state_dict(self._resume_position)
                self._resume_position = None
            else:
                self.train_data.set_epoch(self.epoch)
                self.train_data.load_state_dict(self.train_data.position_after(0))  # from the epoch's start
                self.step_in_epoch = 0
            steps_in_epoch = self._steps_in_epoch = len(self.train_data)
            self._warn_dropped_rows(steps_in_epoch)
            remaining = steps_in_epoch - self.step_in_epoch
            if tc.max_steps is not None:
                remaining = min(remaining, tc.max_steps - self.step)
            kept: collections.deque | None = (
                collections.deque() if post_step or self.train_metrics is not None else None)
            batches = self._batches(remaining, kept)
            while True:
                if self.schedule is not None:
                    self.schedule.apply(self.step)
                try:
                    losses, logits, weights = self.pipeline.progress(batches)
                except StopIteration:
                    break
                self.step += 1
                self.step_in_epoch += 1
                self._pending.append((self.step, self.epoch, losses.detach(), weights.detach()))
                done = kept.popleft() if kept is not None else None  # the batch this step trained on
                if post_step:
                    self._post_step_losses(done)
                if self.train_metrics is not None:
                    self.train_metrics.update(logits, done.labels, done.label_mask)
                    if self.step % self.config.tracking.train_metrics_every_n_steps == 0:
                        self._report_train_metrics()
                if progress is not None:
                    progress.advance()  # before stats: the bar then shows this step with its figures
                if self.step % tc.log_every == 0:
                    self._flush_records()
                    if progress is not None:
                        rate = (self.step - start_step) * samples_per_step / max(time.perf_counter() - start_time, 1e-9)
                        progress.stats(rate, self.last_loss)
                if tc.eval_every and self.step % tc.eval_every == 0:
                    self._flush_records()
                    self.evaluate()
                epoch_end = self.step_in_epoch == steps_in_epoch  # saved after the epoch's evaluation, below
                if tc.checkpoint.every and self.step % tc.checkpoint.every == 0 and not epoch_end:
                    self._flush_records()
                    self.save_checkpoint()
                if stop.requested and not epoch_end:
                    self._stop_for_signal(stop.signum)
            if self.step_in_epoch < steps_in_epoch:
                break  # max_steps reached inside the epoch
            self.epoch += 1
            self.step_in_epoch = 0
            if not tc.eval_every and self._evaluated_at != self.step:
                self._flush_records()
                self.evaluate()
            if tc.checkpoint.every and self.step % tc.checkpoint.every == 0 and self._saved_step != self.step:
                self._flush_records()
                self.save_checkpoint()
            if stop.requested and not self._finished():
                self._stop_for_signal(stop.signum)

        self._flush_records()
        if self.train_metrics is not None and self.train_metrics.updates and \
                self.step % self.config.tracking.train_metrics_every_n_steps:
            self._report_train_metrics()  # the last steps' window and the whole run's lifetime values
        elapsed = max(time.perf_counter() - start_time, 1e-9)
        if progress is not None:
            progress.close()  # before the last log lines
        if self.eval_data is not None and self._evaluated_at != self.step:
            self.evaluate()
        if self.step > 0 and self._saved_step != self.step and tc.checkpoint.at_end:
            self.save_checkpoint()  # the end of training is checkpointed (unless train.checkpoint.at_end: false)
        result = TrainResult(
            steps=self.step,
            epochs_completed=self.epoch,
            samples_per_second=(self.step - start_step) * samples_per_step / elapsed,
            last_loss=self.last_loss,
            eval_metrics=self.last_eval,
            trained_steps=self.step - start_step,
        )
        if self.env.is_main:
            if not result.trained_steps:
                log.info("training done: %d steps, none of them in this run", result.steps)
            else:
                log.info("training done: %d steps, %.0f samples/s, last loss %.4f", result.steps,
                         result.samples_per_second, result.last_loss)
            for cb in self.callbacks:
                cb.on_train_end(self, result)
        return result

    def _warn_dropped_rows(self, steps: int) -> None:
        """Once per run: say so when an epoch leaves out more than 1% of the rows (every rank takes the same
        number of full batches, so row groups that split unevenly over ranks x workers leave rows unread)."""
        total = getattr(self.train_data, "num_rows", None)
        batch = self.config.data.batch_size * self.env.world_size  # the last partial batch is always left out
        used = steps * batch
        if self._warned_dropped or not total or total - used <= max(0.01 * total, batch) or not self.env.is_main:
            return
        self._warned_dropped = True
        log.warning("epoch %d trains %d of the %d rows (%.1f%% left out): every rank takes the same number of "
                    "full batches, and the row groups (whole units of a rank's share) split unevenly over %d "
                    "rank(s) x %d loader worker(s); smaller row groups, or fewer ranks, leave out less",
                    self.epoch, used, total, 100 * (1 - used / total), self.env.world_size,
                    max(1, self.config.data.num_workers))

    def _stop_for_signal(self, signum: int) -> None:
        self._flush_records()
        if self._saved_step != self.step:
            self.save_checkpoint()
        log.warning("stopped by %s after step %d, which is checkpointed: %s",
                    "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name, self.step,
                    "the same command resumes from it" if self.config.train.checkpoint.resume else
                    "train.checkpoint.resume is false, so the same command starts again (set it to true to resume)")
        raise Stopped(signum)

    def _finished(self) -> bool:
        tc = self.config.train
        return self.epoch >= tc.epochs or (tc.max_steps is not None and self.step >= tc.max_steps)

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

    def _progress(self, cleanup: contextlib.ExitStack) -> Progress | None:
        """Rank 0's progress display (train/progress.py), closed by `cleanup` if fit() fails."""
        if not (self.env.is_main and self.config.train.progress_bar):
            return None
        return cleanup.enter_context(Progress(self.planned_steps, initial=self.step,
                                              interval_s=self.config.train.progress_every_s))


__all__ = ["Trainer", "TrainResult", "TrainerCallback", "BatchSource", "model_signature", "TRAIN_LOG"]
