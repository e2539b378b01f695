"""The fused masked loss over binary + regression heads equals a per-task loop, and its edges stay finite."""

import math

import pytest
import torch
import torch.nn.functional as F

from recsys_mtl.losses import TaskKinds, masked_bce, masked_task_loss, masked_task_loss_sums, task_predictions
from recsys_mtl.models import MultiTaskModel
from recsys_mtl.config.train import ModelConfig

from .batches import tiny_spec

# task kinds: binary, mse, huber(delta 1), binary, huber(delta 0.3), mse
KINDS = TaskKinds(regression=torch.tensor([False, True, True, False, True, True]),
                  huber=torch.tensor([False, False, True, False, True, False]),
                  delta=torch.tensor([1.0, 1.0, 1.0, 1.0, 0.3, 1.0]))


def reference_losses(logits, labels, mask, weights=None):
    """One task at a time, labelled rows only, with torch's own loss functions."""
    out = []
    for t in range(logits.shape[1]):
        m = mask[:, t]
        x, y = logits[m, t], labels[m, t]
        if not KINDS.regression[t]:
            per = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        elif KINDS.huber[t]:
            per = F.huber_loss(x, y, reduction="none", delta=float(KINDS.delta[t]))
        else:
            per = F.mse_loss(x, y, reduction="none")
        if weights is not None:
            per = per * weights[m, t]
        out.append(per.sum().item() / max(int(m.sum()), 1))
    return torch.tensor(out)


def mixed_inputs(seed=0, rows=64):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(rows, 6, generator=g)
    mask = torch.rand(rows, 6, generator=g) < 0.6
    binary = (torch.rand(rows, 6, generator=g) < 0.3).float()
    watch = torch.log1p(torch.exp(2 + torch.randn(rows, 6, generator=g)))
    labels = torch.where(KINDS.regression, watch, binary)
    return logits, labels, mask


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_loss_equals_a_per_task_loop_of_bce_mse_and_huber(weighted):
    logits, labels, mask = mixed_inputs()
    weights = torch.rand(logits.shape, generator=torch.Generator().manual_seed(1)) + 0.5 if weighted else None
    result = masked_task_loss(logits, labels, mask, KINDS, weights)
    torch.testing.assert_close(result.losses, reference_losses(logits, labels, mask, weights))
    assert result.present.tolist() == mask.any(0).tolist()


def test_without_kinds_or_with_all_binary_kinds_the_loss_is_masked_bce_exactly():
    logits, _, mask = mixed_inputs()
    labels = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    expected = masked_bce(logits, labels, mask).losses
    assert torch.equal(masked_task_loss(logits, labels, mask).losses, expected)
    assert torch.equal(masked_task_loss(logits, labels, mask, TaskKinds.all_binary(6)).losses, expected)


def test_gradients_match_the_per_task_loop():
    logits, labels, mask = mixed_inputs(seed=3)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    masked_task_loss(a, labels, mask, KINDS).losses.sum().backward()
    reference = []
    for t in range(6):
        m = mask[:, t]
        x, y = b[m, t], labels[m, t]
        if not KINDS.regression[t]:
            per = F.binary_cross_entropy_with_logits(x, y, reduction="sum")
        elif KINDS.huber[t]:
            per = F.huber_loss(x, y, reduction="sum", delta=float(KINDS.delta[t]))
        else:
            per = F.mse_loss(x, y, reduction="sum")
        reference.append(per / max(int(m.sum()), 1))
    torch.stack(reference).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_non_finite_outputs_and_labels_on_unlabelled_rows_reach_neither_loss_nor_gradient():
    logits, labels, mask = mixed_inputs(seed=4, rows=8)
    mask[:, :] = True
    mask[0, 1] = mask[1, 2] = mask[2, 5] = False
    clean = masked_task_loss(logits, labels, mask, KINDS).losses
    logits, labels = logits.clone(), labels.clone()
    logits[0, 1], logits[1, 2] = math.inf, -math.inf
    labels[2, 5] = math.nan
    x = logits.requires_grad_(True)
    result = masked_task_loss(x, labels, mask, KINDS)
    torch.testing.assert_close(result.losses, clean)
    result.losses.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 1] == 0 and x.grad[1, 2] == 0 and x.grad[2, 5] == 0


def test_a_regression_task_without_labels_gets_zero_loss_and_no_gradient():
    logits, labels, mask = mixed_inputs(seed=5, rows=16)
    mask[:, 4] = False
    x = logits.clone().requires_grad_(True)
    result = masked_task_loss(x, labels, mask, KINDS)
    assert result.losses[4] == 0 and not result.present[4]
    result.losses.sum().backward()
    assert x.grad[:, 4].abs().sum() == 0


def test_huber_is_half_the_squared_error_inside_delta_and_linear_outside():
    kinds = TaskKinds(torch.tensor([True]), torch.tensor([True]), torch.tensor([2.0]))
    labels = torch.zeros(2, 1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    sums, counts = masked_task_loss_sums(torch.tensor([[1.5], [5.0]]), labels, mask, kinds)
    assert sums.item() == pytest.approx(0.5 * 1.5 ** 2 + 2.0 * (5.0 - 1.0)) and counts.item() == 2


def test_kinds_for_another_number_of_tasks_are_refused():
    logits, labels, mask = mixed_inputs()
    with pytest.raises(ValueError, match=r"task kinds for \(3,\) tasks, logits have 6"):
        masked_task_loss(logits, labels, mask, TaskKinds.all_binary(3))


def test_the_fused_loss_compiles_as_one_graph_without_host_syncs():
    """fullgraph=True fails on any data-dependent Python branch or host read (.item(), nonzero, bool masks)."""
    logits, labels, mask = mixed_inputs()
    compiled = torch.compile(masked_task_loss_sums, fullgraph=True, backend="eager")
    for got, want in zip(compiled(logits, labels, mask, KINDS), masked_task_loss_sums(logits, labels, mask, KINDS)):
        torch.testing.assert_close(got, want)


def test_predictions_are_probabilities_for_binary_and_values_for_regression_tasks():
    logits = torch.tensor([[0.0, 3.5, -1.0, 2.0, 0.2, 7.0]])
    p = task_predictions(logits, KINDS.regression)
    assert p[0, 0] == 0.5 and p[0, 1] == 3.5 and p[0, 3] == torch.sigmoid(torch.tensor(2.0))
    assert torch.equal(task_predictions(logits, None), torch.sigmoid(logits))


def test_a_regression_head_starts_at_the_mean_of_its_transformed_label_and_a_binary_head_at_its_rate():
    spec = tiny_spec(num_tasks=3, regression={1: {"transform": "log1p"}})
    model = MultiTaskModel(spec, ModelConfig(architecture="shared_bottom"))
    model.set_head_bias_from_rates_(torch.tensor([0.2, 3.7, 0.5]))
    bias = model.heads.bias.detach().flatten()
    torch.testing.assert_close(bias, torch.tensor([math.log(0.2 / 0.8), 3.7, 0.0]))
    model.zero_head_bias_()
    assert (model.heads.bias == 0).all()
