"""The fused GO4Align step (one Triton program) matches the torch path step for step.

On the CPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported on machines without CUDA); on CUDA it runs compiled (those tests skip without a
GPU). Both sides run GO4Align itself, one with `use_fused_kernel = False`.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (requirements/cpu.txt pins it): the fused GO4Align "
                    "step cannot be tested")

from recsys_mtl.weighting import GO4Align  # noqa: E402
from recsys_mtl.weighting.go4align_fused import MAX_FUSED_TASKS, fused_step_applies  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def interpreted_kernels():
    """Skips unless Triton's interpreter was chosen when triton was imported (the CPU tests need it)."""
    from triton import knobs

    if not knobs.runtime.interpret:
        pytest.skip("Triton's interpreter is off: set TRITON_INTERPRET=1 before triton is imported "
                    "(tests/conftest.py does so on machines without CUDA)")


def _pair(num_tasks, num_groups, beta, device="cpu"):
    fused = GO4Align(num_tasks, num_groups=num_groups, beta=beta).to(device)
    fused.use_fused_kernel = True  # on the CPU too (interpreter)
    reference = GO4Align(num_tasks, num_groups=num_groups, beta=beta).to(device)
    reference.use_fused_kernel = False
    return fused, reference


def _assert_same_steps(losses, present, num_groups, beta=0.05, device="cpu", same_groups=True):
    fused, reference = _pair(losses.shape[1], num_groups, beta, device)
    assert fused_step_applies(losses[0].to(device), fused.cum_loss, fused.num_tasks, on_cpu=True)
    for step, (l, p) in enumerate(zip(losses.to(device), present.to(device))):
        w = fused(l, p)
        expected = reference(l, p)
        torch.testing.assert_close(w, expected, msg=lambda m: f"step {step}: weights differ: {m}")
        torch.testing.assert_close(fused.cum_loss, reference.cum_loss, msg=lambda m: f"step {step}: state: {m}")
        torch.testing.assert_close(fused.gamma, reference.gamma, msg=lambda m: f"step {step}: gamma: {m}")
        assert torch.equal(fused.group == -1, reference.group == -1), f"step {step}: absent tasks differ"
        if same_groups:
            assert torch.equal(fused.group, reference.group), f"step {step}: {fused.group} != {reference.group}"


def _random_trace(steps, num_tasks, seed, presence=0.8):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(steps, num_tasks, generator=g) * 2 + 0.01
    present = torch.rand(steps, num_tasks, generator=g) < presence
    present[1] = False  # a step with no task labelled
    present[2] = True
    return losses, present


@pytest.mark.parametrize("num_tasks, num_groups", [(6, 3), (64, 5), (33, 8), (256, 6)])
def test_fused_step_matches_torch_path_on_random_traces_with_absent_tasks(interpreted_kernels, num_tasks, num_groups):
    losses, present = _random_trace(6 if num_tasks < 256 else 4, num_tasks, seed=num_tasks)
    _assert_same_steps(losses, present, num_groups)


@pytest.mark.parametrize("num_tasks, num_groups", [(5, 1), (40, 1)])
def test_fused_step_with_one_group_gives_every_present_task_the_mean(interpreted_kernels, num_tasks, num_groups):
    _assert_same_steps(*_random_trace(5, num_tasks, seed=3), num_groups)


@pytest.mark.parametrize("num_tasks, num_groups", [(7, 7), (7, 12), (20, 64)])
def test_fused_step_with_at_least_as_many_groups_as_tasks(interpreted_kernels, num_tasks, num_groups):
    _assert_same_steps(*_random_trace(5, num_tasks, seed=5), num_groups)


@pytest.mark.parametrize("num_groups", [1, 2, 4, 7])
def test_fused_step_matches_torch_path_with_tied_losses(interpreted_kernels, num_groups):
    g = torch.Generator().manual_seed(3)
    losses, present = [], []
    for step in range(8):
        a, b = torch.rand(2, generator=g).tolist()
        losses.append([a, a, b, a, b, 0.25, 0.25])  # ties within a step and across steps
        present.append([True, True, True, step % 4 != 1, True, step % 2 == 0, True])
    # tied gammas may be split between groups either way at equal cost; the weights are what must agree
    _assert_same_steps(torch.tensor(losses), torch.tensor(present), num_groups, beta=0.3, same_groups=False)


def test_fused_step_leaves_out_tasks_at_or_below_min_loss(interpreted_kernels):
    losses = torch.tensor([[1e-30, 0.3, 0.31, 0.9, 0.0, 0.5]] * 3)
    _assert_same_steps(losses, torch.ones_like(losses, dtype=torch.bool), 2)


def test_fused_step_applies_on_cpu_only_when_asked_and_under_the_interpreter(monkeypatch):
    state = torch.zeros(4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not fused_step_applies(torch.ones(4), state, 4)  # GO4Align's default: the torch path on the CPU
    assert fused_step_applies(torch.ones(4), state, 4, on_cpu=True)
    assert not fused_step_applies(torch.ones(4), state.double(), 4, on_cpu=True)  # float32 state only
    big = MAX_FUSED_TASKS + 1
    assert not fused_step_applies(torch.ones(big), torch.zeros(big), big, on_cpu=True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not fused_step_applies(torch.ones(4), state, 4, on_cpu=True)


def test_state_dict_is_the_same_on_both_paths(interpreted_kernels):
    fused, reference = _pair(6, 2, 0.1)
    losses, present = _random_trace(4, 6, seed=9)
    for l, p in zip(losses, present):
        fused(l, p)
        reference(l, p)
    assert list(fused.state_dict()) == list(reference.state_dict()) == ["cum_loss"]
    resumed = GO4Align(6, num_groups=2, beta=0.1)
    resumed.load_state_dict(fused.state_dict())
    l, p = torch.rand(6) + 0.1, torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(resumed(l, p), reference(l, p))


@cuda
@pytest.mark.parametrize("num_tasks, num_groups", [(6, 3), (64, 5), (64, 1), (64, 64), (256, 16)])
def test_fused_step_matches_torch_path_on_cuda(num_tasks, num_groups):
    losses, present = _random_trace(20, num_tasks, seed=num_tasks)
    _assert_same_steps(losses, present, num_groups, device="cuda")


@cuda
def test_fused_step_compiles_as_one_graph_on_cuda():
    torch._dynamo.reset()
    fused, reference = _pair(64, 5, 0.05, "cuda")
    step = torch.compile(fused, fullgraph=True)
    losses, present = _random_trace(5, 64, seed=1)
    for l, p in zip(losses.cuda(), present.cuda()):
        torch.testing.assert_close(step(l, p), reference(l, p))
        torch.testing.assert_close(fused.cum_loss, reference.cum_loss)
