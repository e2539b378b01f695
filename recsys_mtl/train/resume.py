"""How a run starts and is kept: checkpoint save, resume (with the settings changed since), warm start from
another run's model, and a fresh start's head biases. Mixed into Trainer; the checkpoint files are train/checkpoint.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recsys_mtl.config.loader import ConfigError, flatten, to_yaml
from recsys_mtl.config.train import TrainConfig
from recsys_mtl.train.checkpoint import (CHECKPOINT_DIR, CHECKPOINTS_DIR, CONFIG_FILE, METRICS_KEY, RNG_KEY, SPEC_FILE,
                                        CheckpointManager, pack, rng_state, set_rng_state, unpack)
from recsys_mtl.train.step_log import TRAIN_LOG

log = logging.getLogger(__name__)


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


class TrainerCheckpoints:
    """The trainer's checkpoint save, resume and warm start, and the head-bias start of a fresh run."""

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
        for cb in self.callbacks if self.env.is_main else ():  # callbacks written before the hook lack it
            getattr(cb, "on_checkpoint", lambda *_: None)(self, self.step)
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
        batches = min(num_batches, len(self.train_data))
        for batch in itertools.islice(iter(self.train_data), batches):
            positives += (batch.labels * batch.label_mask).sum(0).double().cpu()
            labelled += batch.label_mask.sum(0).double().cpu()
        self.train_data.load_state_dict(self.train_data.position_after(0))
        if self.env.world_size > 1:
            stats = torch.cat([positives, labelled]).to(self.device)
            dist.all_reduce(stats)
            positives, labelled = stats.cpu().split(self.spec.num_tasks)
        rates = torch.where(labelled > 0, positives / labelled.clamp(min=1), torch.full_like(labelled, 0.5))
        if self.env.is_main:  # e.g. GO4Align's paper mode on rare tasks; labelled sums every rank's batches
            for message in self.weighting.check_task_rates(self.spec.task_names, rates, labelled / max(1, batches),
                                                           getattr(self.spec, "task_types", None)):
                log.warning(message)
        self.module.model.set_head_bias_from_rates_(rates.float())


__all__ = ["TrainerCheckpoints", "changed_settings"]
