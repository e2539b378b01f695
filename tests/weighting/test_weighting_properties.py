"""Properties every registered weighting method must have, and each method's documented scaling behaviour."""

import pytest
import torch

from recsys_mtl.weighting import WeightingMethod, build_weighting, weighting_methods

T = 5
#: constructor arguments a method needs besides num_tasks (config values)
KWARGS = {
    "static": dict(weights=[1.0, 0.5, 2.0, 0.0, 3.0]),
    "go4align": dict(num_groups=2, beta=0.05),
    "go4align@paper": dict(num_groups=2, beta=0.05, mode="paper"),
    "uncertainty": dict(lr=0.05),
}
#: every method, and GO4Align in both modes (`NAME@VARIANT` builds NAME with KWARGS[NAME@VARIANT])
ALL = sorted([*weighting_methods(), "go4align@paper"])
#: methods whose weights depend on the task index, not only on the task's data
INDEX_DEPENDENT = {"static", "random"}


def make(name: str, num_tasks: int = T, **overrides) -> WeightingMethod:
    kwargs = dict(KWARGS.get(name, {}), **overrides)
    if name == "static" and num_tasks != T:
        kwargs["weights"] = [1.0 + i for i in range(num_tasks)]
    return build_weighting(name.split("@")[0], num_tasks, **kwargs)


def run(method: WeightingMethod, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Drive a method over a (steps, T) trace like the trainer does; returns (steps, T) weights.

    The losses re-evaluated after each step (post_step) are a fixed function of the trace:
    each task's loss shrinks by its own factor, derived from the loss value itself so that
    permuting or scaling the trace permutes or scales them too.
    """
    out = []
    for l, p in zip(losses, present):
        out.append(method(l, p))
        if method.needs_post_step_losses:
            shrink = 0.8 + 0.15 * torch.frac(l / torch.where(p, l, 0).sum() * 7.0)
            method.post_step(l * shrink, p)
    return torch.stack(out)


def trace(seed: int, steps: int = 8, num_tasks: int = T, p_present: float = 0.8):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(steps, num_tasks, generator=g, dtype=torch.float64) * 2 + 0.05
    present = torch.rand(steps, num_tasks, generator=g) < p_present
    return losses, present


def test_registry_has_every_method_of_the_issue():
    assert set(weighting_methods()) == {"equal", "static", "uncertainty", "softmax_uncertainty", "dwa", "famo", "group_dro", "random", "go4align"}


def test_unknown_method_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown weighting method 'gradnorm'; known: dwa, equal"):
        build_weighting("gradnorm", 3)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_weights_are_finite_non_negative_detached_and_zero_for_absent_tasks(name, seed):
    losses, present = trace(seed)
    losses.requires_grad_(True)
    w = run(make(name).double(), losses, present)
    assert not w.requires_grad
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert (w[~present] == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_weights_have_the_loss_dtype_after_double(name):
    w = make(name).double()(torch.rand(T, dtype=torch.float64) + 0.1)
    assert w.dtype == torch.float64


@pytest.mark.parametrize("name", [n for n in ALL if n not in INDEX_DEPENDENT])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuting_the_tasks_permutes_the_weights(name, seed):
    losses, present = trace(seed)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(seed))
    w = run(make(name).double(), losses, present)
    w_perm = run(make(name).double(), losses[:, perm], present[:, perm])
    torch.testing.assert_close(w_perm, w[:, perm], rtol=1e-9, atol=1e-12)


# Documented behaviour when every loss is multiplied by c (see each method's docstring).
SCALE_INVARIANT = {"equal", "static", "random", "dwa", "famo"}


@pytest.mark.parametrize("name", sorted(SCALE_INVARIANT))
def test_scale_invariant_methods_ignore_a_common_loss_scale(name):
    losses, present = trace(5)
    torch.testing.assert_close(run(make(name).double(), losses * 37.0, present), run(make(name).double(), losses, present), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["go4align", "go4align@paper"])
def test_go4align_scale_term_is_scale_invariant_but_smoothness_is_not(name):
    losses, present = trace(6)
    flat = lambda c: run(make(name, beta=0.0).double(), losses * c, present)  # noqa: E731
    torch.testing.assert_close(flat(37.0), flat(1.0), rtol=1e-9, atol=1e-12)
    smooth = lambda c: run(make(name, beta=0.05).double(), losses * c, present)  # noqa: E731
    assert not torch.allclose(smooth(37.0), smooth(1.0), rtol=1e-3)


def test_softmax_uncertainty_scaling_losses_by_c_equals_scaling_temperature_by_c():
    losses, present = trace(7)
    a = run(make("softmax_uncertainty", temperature=0.5).double(), losses * 3.0, present)
    b = run(make("softmax_uncertainty", temperature=1.5).double(), losses, present)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_group_dro_scaling_losses_by_c_equals_scaling_step_size_by_c():
    losses, present = trace(8)
    a = run(make("group_dro", step_size=0.1).double(), losses * 3.0, present)
    b = run(make("group_dro", step_size=0.3).double(), losses, present)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_uncertainty_weights_are_not_scale_invariant_and_approach_inverse_losses():
    loss = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25], dtype=torch.float64)
    m = make("uncertainty", lr=0.05).double()
    for _ in range(400):
        w = m(loss)
    torch.testing.assert_close(w, 1 / loss, rtol=0.05, atol=0.0)  # fixed point s = log L


@pytest.mark.parametrize("name", ALL)
def test_resuming_from_state_dict_gives_identical_weights(name):
    losses, present = trace(9, steps=10)
    full, first = make(name), make(name)
    run(full, losses[:5].float(), present[:5])
    run(first, losses[:5].float(), present[:5])
    resumed = make(name)
    resumed.load_state_dict(first.state_dict())
    torch.testing.assert_close(run(resumed, losses[5:].float(), present[5:]), run(full, losses[5:].float(), present[5:]), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_summary_is_scalar_tensors_over_present_tasks(name):
    m = make(name)
    w = m(torch.tensor([0.3, 0.6, 0.9, 1.2, 1.5]), torch.tensor([True, True, False, True, True]))
    s = m.summary()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in s.values())
    present_w = w[[0, 1, 3, 4]]
    assert float(s["min_weight"]) == pytest.approx(float(present_w.min()))
    assert float(s["max_weight"]) == pytest.approx(float(present_w.max()))
    assert all(v.dim() == 1 and v.shape[0] == T for v in m.tracking_state().values())


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("static", dict(weights=[1.0, 2.0]), r"StaticWeights: weights must be a list of 5 numbers"),
        ("static", dict(weights=[1.0, 2.0, -1.0, 0.0, 0.0]), r"StaticWeights: weights\[2\] must be a finite number >= 0, got -1.0"),
        ("uncertainty", dict(lr=0.0), r"UncertaintyWeighting: lr must be a finite number in \(0.0, inf\), got 0.0"),
        ("softmax_uncertainty", dict(temperature=-1), r"SoftmaxUncertaintyWeighting: temperature must be a finite number in \(0.0, inf\), got -1"),
        ("dwa", dict(temperature=float("inf")), r"DynamicWeightAverage: temperature must be a finite number in \(0.0, inf\), got inf"),
        ("famo", dict(lr=-0.1), r"FAMO: lr must be a finite number in \(0.0, inf\), got -0.1"),
        ("famo", dict(weight_decay=-1.0), r"FAMO: weight_decay must be a finite number in \[0.0, inf\), got -1.0"),
        ("group_dro", dict(step_size="big"), r"GroupDRO: step_size must be a finite number in \(0.0, inf\), got 'big'"),
        ("random", dict(seed=-1), r"RandomLossWeighting: seed must be an integer in \[0, 2\*\*32\), got -1"),
        ("equal", dict(num_tasks=0), r"EqualWeights: num_tasks must be an integer >= 1, got 0"),
    ],
)
def test_constructors_reject_bad_arguments_naming_argument_value_and_range(name, kwargs, message):
    num_tasks = kwargs.pop("num_tasks", T)
    with pytest.raises(ValueError, match=message):
        build_weighting(name, num_tasks, **dict(KWARGS.get(name, {}), **kwargs))


def test_build_rejects_unknown_and_missing_config_arguments_by_name():
    with pytest.raises(ValueError, match=r"weighting method 'go4align': unknown argument\(s\) groups; allowed: num_groups, beta, mode, alpha"):
        build_weighting("go4align", 3, groups=2)
    with pytest.raises(ValueError, match=r"weighting method 'static': missing required argument\(s\) weights"):
        build_weighting("static", 3)
    with pytest.raises(ValueError, match=r"'dwa': num_tasks is not an argument \(it is the number of tasks in the feature spec\); remove it"):
        build_weighting("dwa", 3, num_tasks=3)


def test_wrong_loss_shape_is_rejected():
    with pytest.raises(ValueError, match=r"EqualWeights: losses must have shape \(5,\), got \(4,\)"):
        make("equal")(torch.ones(4))


def test_state_dict_names_are_pinned_so_old_checkpoints_keep_loading():
    expected = {
        "dwa": ["loss_prev", "loss_prev2", "seen"],
        "equal": [],
        "famo": ["logits", "prev_losses", "prev_present", "adam_exp_avg", "adam_exp_avg_sq", "adam_steps"],
        "go4align": ["risk_avg", "risk_updates", "cum_risk", "label_count", "label_mean", "label_m2", "prior"],
        "go4align@paper": ["cum_loss"],  # as before the modes: older checkpoints load with mode: paper
        "group_dro": ["log_q"],
        "random": ["step"],
        "softmax_uncertainty": [],
        "static": [],  # static_weights is config, not state: a resume uses the config's
        "uncertainty": ["log_var", "adam_exp_avg", "adam_exp_avg_sq", "adam_steps"],
    }
    assert {name: list(make(name).state_dict()) for name in ALL} == expected


@pytest.mark.parametrize("name", ALL)
def test_losses_of_absent_tasks_are_ignored_even_if_nan(name):
    # a masked mean over zero labels is 0/0 = nan: it must not leak into weights or state
    losses, present = trace(10)
    with_nan = torch.where(present, losses, torch.full_like(losses, float("nan")))
    with_junk = torch.where(present, losses, torch.full_like(losses, 123.0))
    a, b = make(name).double(), make(name).double()
    torch.testing.assert_close(run(a, with_nan, present), run(b, with_junk, present), rtol=0, atol=0)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0, equal_nan=False)
