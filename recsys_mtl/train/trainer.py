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
import itertools
import logging
import signal
import time
from pathlib import Path
from typing import Iterator, Protocol

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.config.loader import ConfigError
from recsys_mtl.config.train import TrainConfig
from recsys_mtl.data.batch import Batch
from recsys_mtl.data.errors import DataError
from recsys_mtl.data.label_check import check_labels
from recsys_mtl.train.callbacks import TrainerCallback, TrainResult
from recsys_mtl.train.checkpoint import CHECKPOINTS_DIR, CheckpointManager, model_signature
from recsys_mtl.train.distributed import DistEnv, computed_on_rank0, init_distributed
from recsys_mtl.train.interrupt import Stopped, StopSignals
from recsys_mtl.train.evaluation import TrainerEvaluation
from recsys_mtl.train.lock import OutputDirLock
from recsys_mtl.train.optimizers import TrainerOptimizers, build_dense_optimizer, seed_everything, set_deterministic
from recsys_mtl.train.progress import Progress
from recsys_mtl.train.resume import TrainerCheckpoints, changed_settings
from recsys_mtl.train.step_log import TRAIN_LOG, TrainerStepLog, TrainingDiverged
from recsys_mtl.train.train_module import MultiTaskTrainModule

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """What the trainer needs from a reader (ParquetStream implements it)."""

    def set_epoch(self, epoch: int) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def position_after(self, num_batches_consumed: int) -> dict: ...


def build_parquet_source(path: str, spec: FeatureSpec, batch_size: int, env: DistEnv, *, seed: int,
                         shuffle: bool, shuffle_buffer_rows: int, num_workers: int, drop_remainder: bool) -> BatchSource:
    from recsys_mtl.data.stream import ParquetStream

    return ParquetStream(path, spec, batch_size, rank=env.rank, world_size=env.world_size, num_workers=num_workers,
                         seed=seed, shuffle=shuffle, shuffle_buffer_rows=shuffle_buffer_rows,
                         drop_remainder=drop_remainder, pin_memory=env.device.type == "cuda")


def _load_spec(path: str) -> FeatureSpec:
    try:
        return FeatureSpec.load(path)
    except ConfigError as exc:
        if not Path(path).exists():  # name the setting that gave it
            raise ConfigError(f"data.spec: {path}: file not found (a config's paths are relative to its file)") from None
        raise


class Trainer(TrainerOptimizers, TrainerCheckpoints, TrainerStepLog, TrainerEvaluation):
    """Builds everything from a TrainConfig; `fit()` trains, evaluates, checkpoints and resumes.

    train_data / eval_data: any BatchSource (default: ParquetStream over the
    config's paths, sharded by rank). spec: defaults to the config's spec file.
    The loop is here; building the model and optimizers is train/optimizers.py, checkpoints, resume and warm
    start train/resume.py, the step log and divergence train/step_log.py, evaluation train/evaluation.py.
    """

    def __init__(self, config: TrainConfig, *, spec: FeatureSpec | None = None,
                 train_data: BatchSource | None = None, eval_data: BatchSource | None = None,
                 env: DistEnv | None = None, callbacks: list[TrainerCallback] | None = None) -> None:
        self.config = config
        self.env = env or init_distributed(config.train.device)
        self.device = self.env.device
        self.spec = spec or _load_spec(config.data.spec)
        self.callbacks = callbacks or []
        self.output_dir = Path(config.train.output_dir)
        tc = config.train
        set_deterministic(tc.deterministic)
        seed_everything(tc.seed)

        self._build_model_and_optimizers()
        self.pipeline = TrainPipelineSparseDist(self.dmp, self.optimizer, self.device, execute_all_batches=True)

        self.train_data = train_data or self._default_source(config.data.train_path, train=True)
        self.eval_data = eval_data
        if self.eval_data is None and config.data.eval_path:
            self.eval_data = self._default_source(config.data.eval_path, train=False)
            if getattr(self.eval_data, "num_rows", None) == 0:  # found now, not by the evaluation after the whole training
                raise DataError(f"data.eval_path {config.data.eval_path}: the eval set has no rows; point it at "
                                "data with labelled rows, or set it to null to train without evaluation")
        if hasattr(self.train_data, "units"):  # a Parquet source: its label columns are checked before training
            computed_on_rank0(lambda: check_labels(self.train_data.units, self.spec, config.data.train_path,
                              config.data.batch_size * self.env.world_size, config.data.unlabelled_tasks,
                                           getattr(self.train_data, "fragments", None)), self.env.world_size)
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
            self.spec.task_names, self.config.data.batch_size, task_types=self.spec.task_types,
            window_rows=max(tr.train_metrics_window_rows, global_batch),
            auc_window_rows=max(tr.train_metrics_auc_window_rows, global_batch), world_size=self.env.world_size,
            rank=self.env.rank, process_group=dist.group.WORLD, device=self.device)

    def _report_train_metrics(self) -> None:
        values = self.train_metrics.compute()
        if self.env.is_main:
            for cb in self.callbacks:
                cb.on_train_metrics(self, self.step, values)

    def _default_source(self, path: str, train: bool) -> BatchSource:
        d = self.config.data
        source = build_parquet_source(
            path, self.spec, d.batch_size if train else (d.eval_batch_size or d.batch_size), self.env,
            seed=self.config.train.seed, shuffle=d.shuffle and train,
            shuffle_buffer_rows=d.shuffle_buffer_rows if train else 0, num_workers=d.num_workers,
            drop_remainder=train,
        )

        def check_ids() -> None:  # before the first step: a bad eval id would otherwise surface after an epoch
            try:
                source.check_ids()
            except DataError as exc:
                raise DataError(f"{'data.train_path' if train else 'data.eval_path'}: {exc}") from None

        computed_on_rank0(check_ids, self.env.world_size)
        return source

    @property
    def module(self) -> MultiTaskTrainModule:
        return self.dmp.module  # type: ignore[return-value]

    # -- pipeline ----------------------------------------------------------------------------
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
            else:  # "zero": p = 0.5 (regression: 0), instead of the layer's random init
                self.module.model.zero_head_bias_()
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

    def _progress(self, cleanup: contextlib.ExitStack) -> Progress | None:
        """Rank 0's progress display (train/progress.py), closed by `cleanup` if fit() fails."""
        if not (self.env.is_main and self.config.train.progress_bar):
            return None
        return cleanup.enter_context(Progress(self.planned_steps, initial=self.step,
                                              interval_s=self.config.train.progress_every_s))


__all__ = ["Trainer", "TrainResult", "TrainerCallback", "BatchSource", "model_signature", "TRAIN_LOG",
           "TrainingDiverged", "changed_settings", "build_dense_optimizer", "build_parquet_source"]
