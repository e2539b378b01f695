"""The weighting benchmark runs every registered method, with and without a training-step hook."""

from recsys_mtl.bench.weighting import run_weighting_bench
from recsys_mtl.weighting import weighting_methods


def test_bench_times_every_method_for_every_t_and_prints_one_table(capsys):
    rows = run_weighting_bench(tasks=(4, 8), warmup=1, iters=3)
    assert {(r["method"], r["tasks"]) for r in rows} == {(m, t) for m in weighting_methods() for t in (4, 8)}
    assert all(r["eager_us"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "weighting step, median per call on cpu" in out and "go4align" in out


def test_bench_reports_ratio_to_the_training_step_from_the_hook():
    built = []

    def step_fn(t):
        built.append(t)
        x = __import__("torch").randn(64, 64)
        return lambda: x @ x

    rows = run_weighting_bench(step_fn=step_fn, tasks=(4,), methods=["equal", "go4align"], warmup=1, iters=3, print_table=False)
    assert built == [4]
    assert all(r["ratio"] == r["eager_us"] / r["step_us"] for r in rows)


def test_only_the_named_methods_are_compiled_and_get_a_compiled_ratio():
    rows = run_weighting_bench(step_fn=lambda t: (lambda: sum(range(1000))), tasks=(4,), methods=["equal", "go4align"],
                               warmup=1, iters=3, compiled=["go4align"], step_warmup=1, step_iters=2, print_table=False)
    by = {r["method"]: r for r in rows}
    assert "compiled_us" not in by["equal"] and by["go4align"]["compiled_us"] > 0
    assert by["go4align"]["compiled_ratio"] == by["go4align"]["compiled_us"] / by["go4align"]["step_us"]


def test_cuda_graph_timing_is_refused_off_cuda():
    import pytest

    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        run_weighting_bench(tasks=(4,), methods=["equal"], warmup=1, iters=1, cuda_graph=True, print_table=False)


def test_the_benchmark_step_trains_the_bench_model_with_t_heads(tmp_path):
    from pathlib import Path

    import torch

    from recsys_mtl.bench.weighting import benchmark_step_fn

    config = str(Path(__file__).resolve().parents[2] / "configs" / "test_tiny.yaml")
    step = benchmark_step_fn(config, batch_size=64, num_batches=2, table_scale=0.001, device="cpu", workdir=tmp_path)(5)
    losses = [float(step()) for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses))) and len(set(losses)) > 1


def test_bench_weighting_is_a_registered_benchmark(capsys):
    from recsys_mtl.cli import build_parser

    args = build_parser().parse_args(["bench", "weighting", "--tasks", "8", "--methods", "equal", "--compile", "none"])
    assert args.tasks == [8] and args.compile == ["none"]


def test_go4align_variants_time_its_paper_mode_and_torch_path():
    import pytest

    from recsys_mtl.bench.weighting import build_bench_method

    rows = run_weighting_bench(tasks=(4,), methods=["go4align@paper", "go4align@paper@torch"], warmup=1, iters=2,
                               compiled=["go4align"], print_table=False)
    assert [r["method"] for r in rows] == ["go4align@paper", "go4align@paper@torch"]
    assert all(r["compiled_us"] > 0 for r in rows)  # --compile go4align covers its variants
    m = build_bench_method("go4align@paper@torch", 4, "cpu")
    assert m.mode == "paper" and m.use_fused_kernel is False
    assert build_bench_method("go4align", 4, "cpu").mode == "rec"
    with pytest.raises(ValueError, match="unknown method variant 'go4align@fast'"):
        build_bench_method("go4align@fast", 4, "cpu")
