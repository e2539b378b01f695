"""The module DMP wraps and the train pipeline calls: batch -> (loss, (losses, logits, weights)).

TorchRec's pipelines run backward on the first output themselves, so the task
weighting happens here, inside forward, and each step has one backward.

Per-task losses are made global before weighting: ranks all-reduce the
per-task sums and label counts, so every rank computes the same L[T] (the
loss of the whole global batch) and the same weights. The masked label moments (count, sum, sum of
squares: `LabelStats`) go through the same all_reduce, for methods that start
from the best constant predictor's loss (GO4Align's rec mode). The differentiable loss
of rank r is sum_t w_t * world_size * sums_r[t] / count[t]; gradients are
averaged over ranks (DDP, TorchRec), which gives exactly the gradient of the
global loss: a 2-process step equals a 1-process step on the same rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from recsys_mtl.data.batch import Batch
from recsys_mtl.losses import TaskKinds, masked_task_loss_sums
from recsys_mtl.weighting.base import LabelStats, WeightingMethod


class WeightedTaskLoss(nn.Module):
    """logits, labels, mask -> (loss to backprop, global L[T] detached, weights[T]).

    Holds no sharded module, so the pipeline's tracer treats it as one leaf.
    The weighting is not a submodule: it has no gradients for DDP to reduce and
    the checkpoint saves its state on its own. `task_kinds` (None: all binary) picks each task's loss
    and tells the weighting's label statistics which tasks are binary. `loss_tasks` ([T] bool, None: all) leaves
    out the labels of tasks that do not train on their own (a cascade's child with child_loss: false, trained
    through its derived product only): the weighting sees them as unlabelled.
    """

    def __init__(self, weighting: WeightingMethod, world_size: int = 1,
                 process_group: dist.ProcessGroup | None = None, compile: bool = False,
                 task_kinds: TaskKinds | None = None, loss_tasks: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("loss_tasks", loss_tasks, persistent=False)
        # per-task loss kinds (None: all binary), as buffers so they move with the module; not in checkpoints
        for name, value in (task_kinds._asdict() if task_kinds is not None else {}).items():
            self.register_buffer(f"kind_{name}", value, persistent=False)
        self.has_task_kinds = task_kinds is not None
        object.__setattr__(self, "weighting", weighting)
        # the compiled callable shares the module's buffers: state_dict and checkpoints are unchanged
        object.__setattr__(self, "_weigh", torch.compile(weighting, fullgraph=True) if compile else weighting)
        self.world_size = world_size
        self.process_group = process_group

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                sample_weights: torch.Tensor | None = None,
                penalty: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`penalty` [T]: per-task regularisation added unweighted for the tasks labelled in the global batch, so a
        task with no labels (past its train.task_epochs) is left exactly as it is."""
        sums, losses, present, denom, label_stats = self._global_losses(logits, labels, mask, sample_weights)
        weights = self._weigh(losses, present, label_stats)
        local = sums * (float(self.world_size) / denom)
        loss = (weights * local).sum()
        if penalty is not None:
            loss = loss + (penalty * present).sum()
        return loss, losses, weights

    @torch.no_grad()
    def global_losses(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                      sample_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch's L[T] and which tasks it labels, without calling the weighting (whose state
        `forward` advances: FAMO keeps the losses it weighted for its post-step update)."""
        _, losses, present, _, _ = self._global_losses(logits, labels, mask, sample_weights)
        return losses, present

    def _global_losses(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                       sample_weights: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(this rank's sums[T] with grad, global L[T], present[T], global label counts clamped to >= 1,
        global LabelStats)."""
        kinds = TaskKinds(self.kind_regression, self.kind_huber, self.kind_delta) if self.has_task_kinds else None
        if self.loss_tasks is not None:
            mask = mask & self.loss_tasks
        sums, counts = masked_task_loss_sums(logits, labels, mask, kinds, sample_weights)
        num_tasks = sums.shape[0]
        # unlabelled rows may hold anything (NaN): where, not multiply
        masked = torch.where(mask, labels.to(sums.dtype), torch.zeros((), dtype=sums.dtype, device=sums.device))
        stats = torch.cat([sums.detach(), counts, masked.sum(0), (masked * masked).sum(0)])
        if self.world_size > 1:
            dist.all_reduce(stats, group=self.process_group)  # one collective for losses and label moments
        global_sums, global_counts, label_total, label_total_sq = stats.detach().split(num_tasks)
        denom = global_counts.clamp(min=1.0)
        binary = (~self.kind_regression if self.has_task_kinds
                  else torch.ones(num_tasks, dtype=torch.bool, device=sums.device))
        label_stats = LabelStats(global_counts, label_total, label_total_sq, binary)
        return sums, global_sums / denom, global_counts > 0, denom, label_stats


class MultiTaskTrainModule(nn.Module):
    """`model` (a MultiTaskModel) + the weighted loss; DMP shards `model.ebc` inside it."""

    def __init__(self, model: nn.Module, weighting: WeightingMethod, world_size: int = 1,
                 process_group: dist.ProcessGroup | None = None, compile_weighting: bool = False,
                 task_kinds: TaskKinds | None = None) -> None:
        super().__init__()
        self.model = model
        spec = getattr(model, "spec", None)
        if task_kinds is None and spec is not None and spec.has_regression:
            task_kinds = TaskKinds.from_spec(spec, model.heads.bias.device)
        loss_tasks = None
        if spec is not None and not all(spec.loss_tasks):
            loss_tasks = torch.tensor(spec.loss_tasks, dtype=torch.bool, device=model.heads.bias.device)
        self.task_loss = WeightedTaskLoss(weighting, world_size, process_group, compile=compile_weighting,
                                          task_kinds=task_kinds, loss_tasks=loss_tasks)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # the penalty is a per-rank mean over rows; averaging gradients over ranks makes it the global batch's mean
        logits, penalty = self.model.logits_and_wide_l2(batch.dense, batch.sparse)
        loss, losses, weights = self.task_loss(logits, batch.labels, batch.label_mask, batch.sample_weights, penalty)
        return loss, (losses, logits, weights)
