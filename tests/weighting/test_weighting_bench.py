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
