"""The weighting step has no host sync: it compiles with fullgraph=True (CPU), and on CUDA it runs
under sync debug mode "error" and inside a CUDA graph (those tests skip without CUDA). On CUDA,
GO4Align runs its fused Triton step (where triton is installed) and, as "go4align-torch", the torch path."""

import pytest
import torch
import torch._dynamo

from recsys_mtl.weighting import GO4Align, build_weighting, weighting_methods
from recsys_mtl.weighting.go4align_fused import TRITON_AVAILABLE, fused_step_applies

T = 6
KWARGS = {"static": dict(weights=[1.0] * T), "go4align": dict(num_groups=3, beta=0.05)}
PRESENT = torch.tensor([True, True, False, True, True, True])


def _steps(device="cpu", n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(T, generator=g) + 0.1).to(device) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(weighting_methods()))
def test_weighting_step_compiles_as_one_graph_and_matches_eager(name):
    torch._dynamo.reset()
    eager, compiled = (build_weighting(name, T, **KWARGS.get(name, {})) for _ in range(2))
    # aot_eager traces exactly like inductor (any graph break raises under fullgraph) without the C++ build
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    post = torch.compile(compiled.post_step, fullgraph=True, backend="aot_eager")
    for losses in _steps():
        torch.testing.assert_close(step(losses, PRESENT), eager(losses, PRESENT))
        if eager.needs_post_step_losses:
            post(losses * 0.9, PRESENT)
            eager.post_step(losses * 0.9, PRESENT)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value)


def test_go4align_compiles_with_inductor_and_matches_eager():
    torch._dynamo.reset()
    eager, compiled = GO4Align(T, num_groups=3, beta=0.05), GO4Align(T, num_groups=3, beta=0.05)
    step = torch.compile(compiled, fullgraph=True)
    for losses in _steps():
        torch.testing.assert_close(step(losses, PRESENT), eager(losses, PRESENT))
        assert torch.equal(compiled.group, eager.group)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA_CASES = sorted(weighting_methods()) + ["go4align-torch"]


def _build_cuda(case):
    """The method on CUDA; "go4align-torch" is GO4Align on its torch path, "go4align" the fused step."""
    name = "go4align" if case == "go4align-torch" else case
    m = build_weighting(name, T, **KWARGS.get(name, {})).cuda()
    if case == "go4align-torch":
        m.use_fused_kernel = False
    elif case == "go4align" and TRITON_AVAILABLE:
        assert fused_step_applies(torch.ones(T, device="cuda"), m.cum_loss, T), "GO4Align should take the fused step"
    return m


@cuda
@pytest.mark.parametrize("case", CUDA_CASES)
def test_weighting_step_does_not_sync_with_the_host_on_cuda(case):
    m = _build_cuda(case)
    steps, present = _steps("cuda"), PRESENT.cuda()
    m(steps[0], present)  # first call may allocate / lazily initialise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for losses in steps[1:]:
            m(losses, present)
            if m.needs_post_step_losses:
                m.post_step(losses * 0.9, present)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("case", CUDA_CASES)
def test_weighting_step_is_capturable_in_a_cuda_graph(case):
    eager, graphed = _build_cuda(case), _build_cuda(case)
    steps, present = _steps("cuda", n=4), PRESENT.cuda()
    static_losses = steps[0].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up on a side stream, as the CUDA graph docs require
        warm = _build_cuda(case)
        warm(static_losses, present)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_weights = graphed(static_losses, present)
        if graphed.needs_post_step_losses:
            graphed.post_step(static_losses * 0.9, present)
    for losses in steps:
        static_losses.copy_(losses)
        graph.replay()
        expected = eager(losses, present)
        if eager.needs_post_step_losses:
            eager.post_step(losses * 0.9, present)
        torch.testing.assert_close(static_weights, expected)
