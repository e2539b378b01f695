"""The shared building blocks: the gate softmax equals torch's softmax, values and gradients."""

from __future__ import annotations

import pytest
import torch

from recsys_mtl.models.layers import gate_softmax


@pytest.mark.parametrize("shape", [(64, 8, 4), (64, 3), (5, 7, 2, 6), (16, 100)])
def test_gate_softmax_equals_softmax_over_the_last_dimension(shape):
    x = (3 * torch.randn(*shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    y = gate_softmax(x)
    ref = x.detach().clone().requires_grad_()
    expected = ref.softmax(dim=-1)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-7)
    assert y.shape == x.shape
    upstream = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    y.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-6)
