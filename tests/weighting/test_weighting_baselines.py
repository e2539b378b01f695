"""Baselines against their papers' / official code's formulation, re-implemented here with autograd and torch.optim."""

import torch
import torch.nn.functional as F

from recsys_mtl.weighting import (
    FAMO,
    DynamicWeightAverage,
    EqualWeights,
    GroupDRO,
    RandomLossWeighting,
    SoftmaxUncertaintyWeighting,
    StaticWeights,
    UncertaintyWeighting,
)

T = 4


def _trace(seed: int, steps: int = 12):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, T, generator=g, dtype=torch.float64) + 0.1


def _grad_weights(loss_fn, losses: torch.Tensor) -> torch.Tensor:
    """d(total loss)/d(L_m): the weights a detached-weight sum(w * L) must reproduce."""
    l = losses.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(l), l)
    return g


def test_famo_matches_the_official_update_rule():
    # official FAMO (Liu et al. 2023): logits w, Adam(lr=0.025, weight_decay=gamma), loss sum(z/c * log D)
    xi = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-3)
    ours = FAMO(T, lr=0.025, weight_decay=1e-3).double()
    before, after = _trace(1), _trace(2) * 0.9
    for l, l_after in zip(before, after):
        z = F.softmax(xi.detach(), -1)

        def official_loss(lv, z=z):
            d = lv + 1e-8
            c = (z / d).sum().detach()
            return (d.log() * z / c).sum()

        torch.testing.assert_close(ours(l), _grad_weights(official_loss, l), rtol=1e-10, atol=1e-12)
        delta = (l + 1e-8).log() - (l_after + 1e-8).log()
        with torch.enable_grad():
            (d,) = torch.autograd.grad(F.softmax(xi, -1), xi, grad_outputs=delta)
        opt.zero_grad()
        xi.grad = d
        opt.step()
        ours.post_step(l_after)
        torch.testing.assert_close(ours.logits, xi.detach(), rtol=1e-9, atol=1e-12)


def test_famo_absent_task_keeps_its_logit_and_gets_weight_zero():
    m = FAMO(3)
    present = torch.tensor([True, False, True])
    w = m(torch.tensor([0.5, 0.6, 0.7]), present)
    m.post_step(torch.tensor([0.4, 0.1, 0.65]), present)
    assert w[1] == 0 and m.logits[1] == 0 and m.adam_steps.tolist() == [1, 0, 1]
    assert abs(float(w.sum()) - 1.0) < 1e-6


def test_uncertainty_weighting_matches_adam_on_kendall_objective():
    s = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.01)
    ours = UncertaintyWeighting(T, lr=0.01).double()
    for l in _trace(3):
        w_ref = torch.exp(-s.detach())
        torch.testing.assert_close(ours(l), w_ref, rtol=1e-10, atol=1e-12)
        opt.zero_grad()
        (torch.exp(-s) * l + s).sum().backward()
        opt.step()
        torch.testing.assert_close(ours.log_var, s.detach(), rtol=1e-9, atol=1e-12)


def test_softmax_uncertainty_is_softmax_of_inverse_losses_over_temperature():
    l = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    w = SoftmaxUncertaintyWeighting(T, temperature=0.7).double()(l)
    torch.testing.assert_close(w, torch.softmax(1 / (l + 1e-8) / 0.7, 0))


def test_softmax_uncertainty_of_half_precision_losses_is_finite():
    l = torch.tensor([0.5, 1e-5, 0.3, 1.0])
    for dtype in (torch.float16, torch.bfloat16):
        w = SoftmaxUncertaintyWeighting(T)(l.to(dtype))
        assert w.dtype == dtype and torch.isfinite(w).all(), (dtype, w)
        torch.testing.assert_close(w.float(), SoftmaxUncertaintyWeighting(T)(l.to(dtype).float()), atol=2e-3, rtol=0)


def test_dwa_leaves_out_a_task_whose_loss_is_zero_instead_of_giving_it_all_the_weight():
    m = DynamicWeightAverage(T)
    normal = torch.tensor([0.3, 0.3, 0.3, 0.02])
    for losses in (normal, normal, torch.tensor([0.3, 0.3, 0.3, 0.0]), normal, normal):
        w = m(losses)
    assert torch.allclose(w, torch.ones(T), atol=1e-6), w  # every ratio is 1: the zero never entered the history
    assert m(torch.tensor([0.3, 0.3, 0.3, 1e-7]))[3] == 0  # at most min_loss: left out like an absent task


def test_dwa_uses_ratio_of_the_last_two_losses_times_task_count():
    m = DynamicWeightAverage(T, temperature=2.0).double()
    l1 = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    l2 = torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
    assert torch.equal(m(l1), torch.ones(T, dtype=torch.float64))
    assert torch.equal(m(l2), torch.ones(T, dtype=torch.float64))
    w3 = m(l2)
    torch.testing.assert_close(w3, 4 * torch.softmax(l2 / l1 / 2.0, 0))


def test_group_dro_is_exponentiated_gradient_on_the_task_simplex():
    m = GroupDRO(T, step_size=0.2).double()
    q = torch.full((T,), 1 / T, dtype=torch.float64)
    for l in _trace(4):
        q = q * torch.exp(0.2 * l)
        q = q / q.sum()
        torch.testing.assert_close(m(l), q)


def test_random_weighting_is_reproducible_varies_per_step_and_sums_to_one():
    a, b = RandomLossWeighting(T, seed=5), RandomLossWeighting(T, seed=5)
    l = torch.ones(T)
    wa = torch.stack([a(l) for _ in range(50)])
    wb = torch.stack([b(l) for _ in range(50)])
    assert torch.equal(wa, wb)
    torch.testing.assert_close(wa.sum(1), torch.ones(50))
    assert not torch.allclose(wa[0], wa[1])
    other = torch.stack([RandomLossWeighting(T, seed=6)(l) for _ in range(3)])
    assert not torch.allclose(other[0], wa[0])


def test_random_weighting_draws_are_standard_normal():
    from recsys_mtl.weighting.random_weighting import counter_normal

    z = torch.cat([counter_normal(0, torch.tensor(s), 64, torch.float64) for s in range(200)])
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03


def test_equal_and_static_weights_ignore_the_losses():
    present = torch.tensor([True, False, True, True])
    assert EqualWeights(T)(torch.rand(T), present).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert StaticWeights(T, weights=[0.5, 2.0, 1.0, 0.0])(torch.rand(T), present).tolist() == [0.5, 0.0, 1.0, 0.0]
