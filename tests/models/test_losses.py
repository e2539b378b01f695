import math

import pytest
import torch
import torch.nn.functional as F

from recsys_mtl.losses import masked_bce


def reference_losses(logits, labels, mask, weights=None):
    """One task at a time, labelled rows only: the definition masked_bce must match."""
    out = []
    for t in range(logits.shape[1]):
        m = mask[:, t]
        if not m.any():
            out.append(0.0)
            continue
        w = None if weights is None else weights[m, t]
        per = F.binary_cross_entropy_with_logits(logits[m, t], labels[m, t], weight=w, reduction="sum")
        out.append(per.item() / int(m.sum()))
    return torch.tensor(out)


@pytest.mark.parametrize("weighted", [False, True])
def test_masked_bce_equals_per_task_loop_over_labelled_rows(weighted):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 12, generator=g)
    mask = torch.rand(64, 12, generator=g) < 0.6
    labels = ((torch.rand(64, 12, generator=g) < 0.3) & mask).float()
    weights = torch.rand(64, 12, generator=g) + 0.5 if weighted else None
    result = masked_bce(logits, labels, mask, weights)
    assert result.losses.shape == (12,)
    torch.testing.assert_close(result.losses, reference_losses(logits, labels, mask, weights))
    assert result.present.tolist() == mask.any(0).tolist()


def test_task_without_labels_gets_zero_loss_no_nan_and_no_gradient():
    logits = torch.randn(8, 3, requires_grad=True)
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[:, 1] = False
    labels = torch.zeros(8, 3)
    result = masked_bce(logits, labels, mask)
    assert result.losses[1].item() == 0.0
    assert result.present.tolist() == [True, False, True]
    result.losses.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[:, 1].abs().sum().item() == 0.0


def test_non_finite_logits_on_unlabelled_rows_do_not_leak():
    logits = torch.zeros(4, 2)
    logits[0, 0] = math.inf
    logits[1, 1] = math.nan
    mask = torch.ones(4, 2, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = False
    result = masked_bce(logits, torch.zeros(4, 2), mask)
    assert torch.isfinite(result.losses).all()
    torch.testing.assert_close(result.losses, torch.full((2,), math.log(2.0)))


@pytest.mark.parametrize("bad", ["label", "weight"])
def test_a_nan_label_or_weight_on_an_unlabelled_row_leaks_into_neither_loss_nor_gradient(bad):
    """A weight column computed upstream (watch time / duration) is NaN where there was nothing to measure; the
    forward's mask hid it, but the backward of loss * weight is weight * grad: 0 * NaN = NaN in the logits."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=g, requires_grad=True)
    labels = (torch.rand(8, 3, generator=g) < 0.5).float()
    weights = torch.rand(8, 3, generator=g) + 0.5
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[3, 0] = mask[5, 2] = False
    clean = masked_bce(logits, labels, mask, weights).losses
    (labels if bad == "label" else weights)[3, 0] = math.nan
    (labels if bad == "label" else weights)[5, 2] = math.inf
    result = masked_bce(logits, labels, mask, weights)
    torch.testing.assert_close(result.losses, clean)
    result.losses.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[3, 0] == 0 and logits.grad[5, 2] == 0


def test_all_tasks_absent_gives_zeros():
    result = masked_bce(torch.randn(5, 4), torch.zeros(5, 4), torch.zeros(5, 4, dtype=torch.bool))
    assert result.losses.tolist() == [0.0] * 4
    assert not result.present.any()


def test_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        masked_bce(torch.randn(5, 4), torch.zeros(5, 3), torch.zeros(5, 3, dtype=torch.bool))
