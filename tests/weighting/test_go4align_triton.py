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

from recsys_mtl.weighting import GO4Align, LabelStats  # noqa: E402
from recsys_mtl.weighting.go4align_fused import MAX_FUSED_TASKS, fused_step_applies  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def interpreted_kernels():
    """Skips unless Triton's interpreter was chosen when triton was imported (the CPU tests need it)."""
    from triton import knobs

    if not knobs.runtime.interpret:
        pytest.skip("Triton's interpreter is off: set TRITON_INTERPRET=1 before triton is imported "
                    "(tests/conftest.py does so on machines without CUDA)")


def _pair(num_tasks, num_groups, beta, device="cpu", mode="paper"):
    fused = GO4Align(num_tasks, num_groups=num_groups, beta=beta, mode=mode).to(device)
    fused.use_fused_kernel = True  # on the CPU too (interpreter)
    reference = GO4Align(num_tasks, num_groups=num_groups, beta=beta, mode=mode).to(device)
    reference.use_fused_kernel = False
    return fused, reference


def _grouping_cost(gamma, group):
    """Within-group sum of squares of gamma (float64) for a grouping."""
    g, cost = gamma.double().cpu(), 0.0
    for c in group.unique().tolist():
        if c >= 0:
            x = g[group.cpu() == c]
            cost += float(((x - x.mean()) ** 2).sum())
    return cost


def _state(m):
    return {**m.state_dict(), "gamma": m.gamma, **({"risk": m.risk} if m.mode == "rec" else {})}


def _assert_same_steps(losses, present, num_groups, beta=0.05, device="cpu", mode="paper", stats=None):
    """Step for step: the state, gamma and absent tasks agree to float32 tolerance; so do the groups and weights,
    except where float32 rounding makes two groupings nearly tie (gamma spread over orders of magnitude): then
    the kernel's grouping must be at least as good (float64 within-group sum of squares) as the torch path's."""
    fused, reference = _pair(losses.shape[1], num_groups, beta, device, mode)
    state = fused.cum_loss if mode == "paper" else fused.risk_avg
    assert fused_step_applies(losses[0].to(device), state, fused.num_tasks, on_cpu=True)
    # rec's gamma is exp of a sum of logs (scale, softmax, median): a few float32 ulps of each add up; so do
    # the GPU's approximate exp and log
    tol = {} if mode == "paper" and device == "cpu" else {"rtol": 2e-5, "atol": 1e-5}
    regroupings = 0
    for step, (l, p) in enumerate(zip(losses.to(device), present.to(device))):
        s = None if stats is None else LabelStats(*(v[step].to(device) for v in stats))
        w = fused(l, p, s)
        expected = reference(l, p, s)
        for key, value in _state(reference).items():
            torch.testing.assert_close(_state(fused)[key], value, **tol, msg=lambda m: f"step {step}: {key}: {m}")
        assert torch.equal(fused.group == -1, reference.group == -1), f"step {step}: absent tasks differ"
        if torch.equal(fused.group, reference.group):
            torch.testing.assert_close(w, expected, **tol, msg=lambda m: f"step {step}: weights differ: {m}")
        else:
            regroupings += 1
            ours, theirs = _grouping_cost(reference.gamma, fused.group), _grouping_cost(reference.gamma, reference.group)
            assert ours <= theirs * (1 + 1e-5) + 1e-9, f"step {step}: a worse grouping ({ours} > {theirs})"
    assert regroupings <= len(losses) // 3, f"{regroupings} of {len(losses)} steps grouped differently"


def _random_trace(steps, num_tasks, seed, presence=0.8):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(steps, num_tasks, generator=g) * 2 + 0.01
    present = torch.rand(steps, num_tasks, generator=g) < presence
    present[1] = False  # a step with no task labelled
    present[2] = True
    return losses, present


def _random_label_stats(present, seed):
    """Per-step label moments as the trainer all-reduces them: a third of the tasks regression."""
    g = torch.Generator().manual_seed(seed)
    steps, num_tasks = present.shape
    binary = (torch.arange(num_tasks) % 3 != 2).expand(steps, num_tasks)
    count = torch.where(present, torch.randint(1, 400, (steps, num_tasks), generator=g).float(), 0.0)
    rate = torch.rand(steps, num_tasks, generator=g) * 0.3
    rate[:, 0] = 0.0  # a binary task without positives so far
    values = torch.randn(steps, num_tasks, generator=g) * 2 + 1
    total = torch.where(binary, (count * rate).round(), count * values)
    total_sq = torch.where(binary, total, count * (values * values + 0.5))
    return count, total, total_sq, binary


MODES = pytest.mark.parametrize("mode", ["paper", "rec"])


@MODES
@pytest.mark.parametrize("num_tasks, num_groups", [(6, 3), (64, 5), (33, 8), (256, 6)])
def test_fused_step_matches_torch_path_on_random_traces_with_absent_tasks(interpreted_kernels, mode, num_tasks,
                                                                          num_groups):
    losses, present = _random_trace(6 if num_tasks < 256 else 4, num_tasks, seed=num_tasks)
    stats = _random_label_stats(present, seed=num_tasks) if mode == "rec" else None
    _assert_same_steps(losses, present, num_groups, mode=mode, stats=stats)


def test_fused_rec_step_matches_torch_path_without_label_statistics(interpreted_kernels):
    _assert_same_steps(*_random_trace(6, 12, seed=4), 3, mode="rec")


@MODES
@pytest.mark.parametrize("num_tasks, num_groups", [(5, 1), (40, 1)])
def test_fused_step_with_one_group_gives_every_present_task_the_same_weight(interpreted_kernels, mode, num_tasks,
                                                                           num_groups):
    losses, present = _random_trace(5, num_tasks, seed=3)
    stats = _random_label_stats(present, seed=3) if mode == "rec" else None
    _assert_same_steps(losses, present, num_groups, mode=mode, stats=stats)


@MODES
@pytest.mark.parametrize("num_tasks, num_groups", [(7, 7), (7, 12), (20, 64)])
def test_fused_step_with_at_least_as_many_groups_as_tasks(interpreted_kernels, mode, num_tasks, num_groups):
    losses, present = _random_trace(5, num_tasks, seed=5)
    stats = _random_label_stats(present, seed=5) if mode == "rec" else None
    _assert_same_steps(losses, present, num_groups, mode=mode, stats=stats)


@MODES
@pytest.mark.parametrize("num_groups", [1, 2, 4, 7])
def test_fused_step_matches_torch_path_with_tied_losses(interpreted_kernels, mode, num_groups):
    g = torch.Generator().manual_seed(3)
    losses, present = [], []
    for step in range(8):
        a, b = torch.rand(2, generator=g).tolist()
        losses.append([a, a, b, a, b, 0.25, 0.25])  # ties within a step and across steps
        present.append([True, True, True, step % 4 != 1, True, step % 2 == 0, True])
    _assert_same_steps(torch.tensor(losses), torch.tensor(present), num_groups, beta=0.3, mode=mode)


@MODES
def test_fused_step_treats_losses_at_or_below_min_loss_like_the_torch_path(interpreted_kernels, mode):
    losses = torch.tensor([[1e-30, 0.3, 0.31, 0.9, 0.0, 0.5]] * 3)
    _assert_same_steps(losses, torch.ones_like(losses, dtype=torch.bool), 2, mode=mode)


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


@MODES
def test_a_checkpoint_of_the_fused_step_resumes_on_the_torch_path(interpreted_kernels, mode):
    fused, reference = _pair(6, 2, 0.1, mode=mode)
    losses, present = _random_trace(5, 6, seed=9)
    stats = _random_label_stats(present, seed=9)
    for step in range(4):
        s = LabelStats(*(v[step] for v in stats)) if mode == "rec" else None
        fused(losses[step], present[step], s)
        reference(losses[step], present[step], s)
    assert list(fused.state_dict()) == list(reference.state_dict())
    resumed = GO4Align(6, num_groups=2, beta=0.1, mode=mode)
    resumed.load_state_dict(fused.state_dict())
    s = LabelStats(*(v[4] for v in stats)) if mode == "rec" else None
    torch.testing.assert_close(resumed(losses[4], present[4], s), reference(losses[4], present[4], s))


def test_the_fused_ops_pass_torch_opcheck_schema_fake_tensor_and_aot_dispatch(interpreted_kernels):
    """What torch.compile needs of a custom op (its fake implementation, declared mutations), checked on the CPU."""
    from recsys_mtl.weighting.go4align_fused import go4align_paper_step, go4align_rec_step

    t = 6
    losses, present = torch.rand(t) + 0.1, torch.tensor([True, True, False, True, True, True])
    group = torch.full((t,), -1, dtype=torch.long)
    torch.library.opcheck(go4align_paper_step, (losses, present, torch.zeros(t), group.clone(), torch.zeros(t), 3, 0.05,
                                                1e-6))
    stats = (torch.full((t,), 10.0), torch.full((t,), 3.0), torch.full((t,), 4.0), torch.ones(t, dtype=torch.bool))
    for given in (stats, (None,) * 4):
        state = [torch.zeros(t) for _ in range(8)]
        torch.library.opcheck(go4align_rec_step, (losses, present, *given, *state, group.clone(), torch.zeros(t), 3,
                                                  1e-3, 0.5, 0.99, 10.0, 1e-6))


@cuda
@MODES
@pytest.mark.parametrize("num_tasks, num_groups", [(6, 3), (64, 5), (64, 1), (64, 64), (256, 16)])
def test_fused_step_matches_torch_path_on_cuda(mode, num_tasks, num_groups):
    losses, present = _random_trace(20, num_tasks, seed=num_tasks)
    stats = _random_label_stats(present, seed=num_tasks) if mode == "rec" else None
    _assert_same_steps(losses, present, num_groups, device="cuda", mode=mode, stats=stats)


@cuda
@MODES
def test_fused_step_compiles_as_one_graph_on_cuda(mode):
    torch._dynamo.reset()
    fused, reference = _pair(64, 5, 0.05, "cuda", mode=mode)
    step = torch.compile(fused, fullgraph=True)
    losses, present = _random_trace(5, 64, seed=1)
    stats = _random_label_stats(present, seed=1)
    for i, (l, p) in enumerate(zip(losses.cuda(), present.cuda())):
        s = LabelStats(*(v[i].cuda() for v in stats)) if mode == "rec" else None
        torch.testing.assert_close(step(l, p, s), reference(l, p, s))
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(fused.state_dict()[key], value)


_COMPILE_FOR_H100 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from recsys_mtl.weighting import go4align_triton as kernels

def signature(kernel, pointers, ints, floats):
    kinds = {**pointers, **{n: "i32" for n in ints}, **{n: "fp32" for n in floats}}
    return {n: kinds.get(n, "constexpr") for n in kernel.arg_names}

paper = signature(kernels.go4align_paper_kernel,
                  {"present_ptr": "*i1", "group_ptr": "*i64", **{n: "*fp32" for n in
                   ("losses_ptr", "cum_loss_ptr", "gamma_ptr", "weights_ptr")}},
                  ("num_tasks", "kk"), ("beta", "min_loss"))
rec = signature(kernels.go4align_rec_kernel,
                {"present_ptr": "*i1", "binary_ptr": "*i1", "group_ptr": "*i64",
                 **{n: "*fp32" for n in kernels.go4align_rec_kernel.arg_names if n.endswith("_ptr")
                    and n not in ("present_ptr", "binary_ptr", "group_ptr")}},
                ("num_tasks", "kk"), ("beta", "alpha", "ema_decay", "one_minus_decay", "max_ratio", "risk_floor"))
target = GPUTarget("cuda", 90, 32)
for kernel, sig, constants in ((kernels.go4align_paper_kernel, paper, {"BLOCK_T": 16, "BLOCK_K": 4}),
                               (kernels.go4align_rec_kernel, rec, {"HAS_STATS": True, "BLOCK_T": 16, "BLOCK_K": 4})):
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constants), target=target)
    assert compiled.asm["cubin"], kernel
    print("compiled", kernel.__name__)
"""


@pytest.mark.slow
def test_the_fused_kernels_compile_to_h100_machine_code_without_a_gpu(tmp_path):
    """The interpreter runs the kernels as Python; this runs Triton's compiler (to sm_90 cubin with the ptxas
    that triton ships), which refuses what only a GPU build would (types, layouts, loop-carried values)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _COMPILE_FOR_H100], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["compiled", "go4align_paper_kernel", "compiled", "go4align_rec_kernel"]
