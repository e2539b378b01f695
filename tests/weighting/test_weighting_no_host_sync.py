"""The weighting step has no host sync: it compiles with fullgraph=True (CPU), and on CUDA it runs
under sync debug mode "error" and inside a CUDA graph (those tests skip without CUDA). Every method
gets the label statistics the trainer passes (GO4Align's rec mode reads them), and GO4Align runs in
both modes. On CUDA GO4Align runs its fused Triton step (where triton is installed) and, as
"...@torch" cases, its torch path."""

import pytest
import torch
import torch._dynamo

from recsys_mtl.weighting import GO4Align, LabelStats, build_weighting, weighting_methods
from recsys_mtl.weighting.go4align_fused import TRITON_AVAILABLE, fused_step_applies

T = 6
KWARGS = {"static": dict(weights=[1.0] * T), "go4align": dict(num_groups=3, beta=0.05),
          "go4align@paper": dict(num_groups=3, beta=0.05, mode="paper")}
ALL = sorted([*weighting_methods(), "go4align@paper"])
PRESENT = torch.tensor([True, True, False, True, True, True])
BINARY = torch.tensor([True, True, True, True, False, False])  # two regression tasks


def build(name):
    return build_weighting(name.split("@")[0], T, **KWARGS.get(name, {}))


def _steps(device="cpu", n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(T, generator=g) + 0.1).to(device) for _ in range(n)]


def _label_stats(device="cpu", n=3):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        count = torch.where(PRESENT, torch.randint(1, 50, (T,), generator=g).float(), 0.0)
        total = count * torch.rand(T, generator=g)
        out.append(LabelStats(count.to(device), total.to(device), (total * 1.3).to(device), BINARY.to(device)))
    return out


@pytest.mark.parametrize("name", ALL)
def test_weighting_step_compiles_as_one_graph_and_matches_eager(name):
    torch._dynamo.reset()
    eager, compiled = build(name), build(name)
    # aot_eager traces exactly like inductor (any graph break raises under fullgraph) without the C++ build
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    post = torch.compile(compiled.post_step, fullgraph=True, backend="aot_eager")
    for losses, stats in zip(_steps(), _label_stats()):
        torch.testing.assert_close(step(losses, PRESENT, stats), eager(losses, PRESENT, stats))
        if eager.needs_post_step_losses:
            post(losses * 0.9, PRESENT)
            eager.post_step(losses * 0.9, PRESENT)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value)


@pytest.mark.parametrize("mode", ["rec", "paper"])
def test_go4align_compiles_with_inductor_and_matches_eager(mode):
    torch._dynamo.reset()
    eager, compiled = GO4Align(T, num_groups=3, beta=0.05, mode=mode), GO4Align(T, num_groups=3, beta=0.05, mode=mode)
    step = torch.compile(compiled, fullgraph=True)
    for losses, stats in zip(_steps(), _label_stats()):
        torch.testing.assert_close(step(losses, PRESENT, stats), eager(losses, PRESENT, stats))
        assert torch.equal(compiled.group, eager.group)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value)


def test_go4align_rec_compiles_without_label_stats_too():
    """Benchmarks and hand-driven use pass no statistics: that path is one graph as well."""
    torch._dynamo.reset()
    eager, compiled = GO4Align(T, num_groups=3), GO4Align(T, num_groups=3)
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    for losses in _steps(n=4):
        torch.testing.assert_close(step(losses, PRESENT), eager(losses, PRESENT))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA_CASES = ALL + ["go4align@torch", "go4align@paper@torch"]


def build_cuda(case):
    """The method on CUDA; a "...@torch" case is GO4Align on its torch path, else GO4Align takes the fused step."""
    name = case.removesuffix("@torch")
    m = build(name).cuda()
    if case.endswith("@torch"):
        m.use_fused_kernel = False
    elif isinstance(m, GO4Align) and TRITON_AVAILABLE:
        state = m.cum_loss if m.mode == "paper" else m.risk_avg
        assert fused_step_applies(torch.ones(T, device="cuda"), state, T), "GO4Align should take the fused step"
    return m


@cuda
@pytest.mark.parametrize("name", CUDA_CASES)
def test_weighting_step_does_not_sync_with_the_host_on_cuda(name):
    m = build_cuda(name)
    steps, present, stats = _steps("cuda"), PRESENT.cuda(), _label_stats("cuda")
    m(steps[0], present, stats[0])  # first call may allocate / lazily initialise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for losses, s in zip(steps[1:], stats[1:]):
            m(losses, present, s)
            if m.needs_post_step_losses:
                m.post_step(losses * 0.9, present)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("name", CUDA_CASES)
def test_weighting_step_is_capturable_in_a_cuda_graph(name):
    eager, graphed = build_cuda(name), build_cuda(name)
    steps, present, stats = _steps("cuda", n=4), PRESENT.cuda(), _label_stats("cuda", n=4)
    static_losses = steps[0].clone()
    static_stats = LabelStats(*(v.clone() for v in stats[0]))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up on a side stream, as the CUDA graph docs require
        warm = build_cuda(name)
        warm(static_losses, present, static_stats)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_weights = graphed(static_losses, present, static_stats)
        if graphed.needs_post_step_losses:
            graphed.post_step(static_losses * 0.9, present)
    for losses, st in zip(steps, stats):
        static_losses.copy_(losses)
        for dst, src in zip(static_stats, st):
            dst.copy_(src)
        graph.replay()
        expected = eager(losses, present, st)
        if eager.needs_post_step_losses:
            eager.post_step(losses * 0.9, present)
        torch.testing.assert_close(static_weights, expected)
