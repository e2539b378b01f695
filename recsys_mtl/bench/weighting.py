"""Cost of the task-weighting step, per method and number of tasks T, against a training step.

For every registered method and each T, times one weighting step (forward, plus
`post_step` for methods that need re-evaluated losses; the extra forward pass
FAMO needs for those losses is the trainer's cost and is NOT included) as the
median over many calls after a warm-up, eagerly, optionally under
torch.compile(fullgraph=True) and, on CUDA, replayed from a CUDA graph. If
`step_fn` is given, `step_fn(T)` must return a zero-argument callable that runs
one training step with T tasks (build the model once inside step_fn, return the
closure); its median time is measured in the same run and the table shows
weighting time / step time.

    recsys-mtl bench weighting                      # T in 8 32 64 128, all methods, GO4Align also compiled
    recsys-mtl bench weighting --tasks 64 --methods equal go4align --compile none
    recsys-mtl bench weighting --device cuda --cuda-graph

Bench-only method variants: `go4align@paper` is GO4Align's paper mode, `...@torch` its torch
path instead of the fused Triton step it takes on CUDA. On CUDA the default methods add
go4align@torch, go4align@paper and go4align@paper@torch, so fused and torch paths are timed side by side.

The training step (`recsys-mtl bench weighting`) is the benchmark model of `bench train`
(recsys_mtl/bench/model_step.py: the DMP-sharded model of configs/synthetic.yaml, equal
weights, fused embedding optimizer + Adam) with T heads, on synthetic batches with T tasks
built before timing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from recsys_mtl.bench import CONFIGS
from recsys_mtl.weighting import WeightingMethod, build_weighting, weighting_methods

#: constructor arguments for methods that need some (config values)
DEFAULT_KWARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "static": lambda t: {"weights": [1.0] * t},
    "go4align": lambda t: {"num_groups": 5},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of fn (device-synchronised around each call: a per-call latency, not throughput)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: bench-only suffixes of a method name (GO4Align): its paper mode, its torch path instead of the fused step
VARIANTS = ("paper", "torch")
CUDA_EXTRA_METHODS = ["go4align@torch", "go4align@paper", "go4align@paper@torch"]


def build_bench_method(name: str, t: int, device: torch.device,
                       method_kwargs: dict[str, dict[str, Any]] | None = None) -> WeightingMethod:
    """A registered method by name, or a variant `go4align@paper`, `go4align@torch`, `go4align@paper@torch`."""
    base, *flags = name.split("@")
    unknown = [f for f in flags if f not in VARIANTS]
    if unknown or (flags and base != "go4align"):
        raise ValueError(f"bench weighting: unknown method variant {name!r}; variants are go4align@"
                         f"{{{','.join(VARIANTS)}}} (combinable: go4align@paper@torch)")
    given = method_kwargs or {}
    kwargs = dict(given.get(name, given.get(base, DEFAULT_KWARGS.get(base, lambda _t: {})(t))))
    if "paper" in flags:
        kwargs["mode"] = "paper"
    method = build_weighting(base, t, **kwargs).to(device)
    if "torch" in flags:
        method.use_fused_kernel = False
    return method


def _weighting_step(name: str, t: int, device: torch.device, compiled: bool,
                    method_kwargs: dict[str, dict[str, Any]] | None, cuda_graph: bool = False) -> Callable[[], Any]:
    method = build_bench_method(name, t, device, method_kwargs)
    gen = torch.Generator().manual_seed(0)
    losses = (torch.rand(t, generator=gen) + 0.1).to(device)
    present = (torch.rand(t, generator=gen) < 0.9).to(device)
    after = losses * 0.9
    forward, post = method, method.post_step
    if cuda_graph:
        return _graphed_step(method, losses, after, present)
    if compiled:
        forward = torch.compile(method, fullgraph=True)
        post = torch.compile(method.post_step, fullgraph=True)
    if method.needs_post_step_losses:
        def step() -> None:
            forward(losses, present)
            post(after, present)
    else:
        def step() -> None:
            forward(losses, present)
    return step


def _graphed_step(method, losses: torch.Tensor, after: torch.Tensor, present: torch.Tensor) -> Callable[[], Any]:
    """One weighting step captured in a CUDA graph (as tests/weighting/test_weighting_no_host_sync.py does)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as the CUDA graph docs require
        for _ in range(3):
            method(losses, present)
            if method.needs_post_step_losses:
                method.post_step(after, present)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        method(losses, present)
        if method.needs_post_step_losses:
            method.post_step(after, present)
    return graph.replay


def run_weighting_bench(
    step_fn: Callable[[int], Callable[[], Any]] | None = None,
    tasks: Sequence[int] = (8, 32, 64, 128),
    device: str | torch.device = "cpu",
    *,
    methods: Sequence[str] | None = None,
    warmup: int = 20,
    iters: int = 200,
    compiled: bool | Sequence[str] = False,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    print_table: bool = True,
    step_warmup: int | None = None,
    step_iters: int | None = None,
    cuda_graph: bool = False,
) -> list[dict[str, Any]]:
    """Time every (method, T); returns one row per pair and prints a table.

    Rows: method, tasks, eager_us (median µs per weighting step), compiled_us (if `compiled`:
    True for every method, or the names of the methods to compile), graph_us (if `cuda_graph`,
    CUDA only), and with `step_fn`: step_us (median training step, `step_warmup`/`step_iters`
    calls, default `warmup`/`iters`) and ratio = eager_us / step_us (compiled_ratio, graph_ratio).
    """
    device = torch.device(device)
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, got {device}")
    names = sorted(weighting_methods()) if methods is None else list(methods)
    if methods is None and device.type == "cuda":
        names += CUDA_EXTRA_METHODS
    to_compile = set(names) if compiled is True else set(compiled or ())
    rows = []
    for t in tasks:
        step_us = None
        if step_fn is not None:
            step = step_fn(t)
            step_us = time_call(step, device, warmup if step_warmup is None else step_warmup,
                                iters if step_iters is None else step_iters) * 1e6
            del step
        for name in names:
            row: dict[str, Any] = {"method": name, "tasks": t}
            row["eager_us"] = time_call(_weighting_step(name, t, device, False, method_kwargs), device, warmup, iters) * 1e6
            if name in to_compile or name.split("@")[0] in to_compile:  # --compile go4align covers its variants
                torch._dynamo.reset()
                fn = _weighting_step(name, t, device, True, method_kwargs)
                row["compiled_us"] = time_call(fn, device, warmup, iters) * 1e6
            if cuda_graph:
                row["graph_us"] = time_call(_weighting_step(name, t, device, False, method_kwargs, cuda_graph=True),
                                            device, warmup, iters) * 1e6
            if step_us is not None:
                row["step_us"] = step_us
                row["ratio"] = row["eager_us"] / step_us
                for kind in ("compiled", "graph"):
                    if f"{kind}_us" in row:
                        row[f"{kind}_ratio"] = row[f"{kind}_us"] / step_us
            rows.append(row)
    if print_table:
        print(format_table(rows, device))
    return rows


def format_table(rows: list[dict[str, Any]], device: torch.device) -> str:
    cols = [c for c in ("method", "tasks", "eager_us", "compiled_us", "graph_us", "step_us", "ratio", "compiled_ratio",
                        "graph_ratio") if any(c in r for r in rows)]
    header = f"weighting step, median per call on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    lines = [header, "  ".join(f"{c:>19}" if c == "method" else f"{c:>14}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "method":
                cells.append(f"{v:>19}")
            elif v is None:
                cells.append(f"{'-':>14}")
            elif c.endswith("ratio"):
                cells.append(f"{100 * v:>13.3f}%")
            elif isinstance(v, float):
                cells.append(f"{v:>14.1f}")
            else:
                cells.append(f"{v:>14}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


#: the issue's targets for GO4Align at T = 64: weighting time / training step
TARGETS = {"cpu": ("eager or compiled", 0.02), "cuda": ("CUDA graph", 0.01)}


def benchmark_step_fn(config: str, batch_size: int, num_batches: int, table_scale: float, device: str,
                      workdir: Path, threads: int | None = None) -> Callable[[int], Callable[[], Any]]:
    """step_fn(T): the benchmark model with T heads and its equal-weights step on pre-built synthetic batches."""
    def step_fn(t: int) -> Callable[[], Any]:
        from recsys_mtl.bench.model_step import build_plain_step, synthetic_batches
        from recsys_mtl.config.train import TrainConfig
        from recsys_mtl.data.folder import SPEC_FILE
        from recsys_mtl.train.distributed import init_distributed

        data = workdir / f"tasks{t}"
        cfg = TrainConfig.load(config, [f"data.train_path={data}", f"data.spec={data / SPEC_FILE}",
                                        "data.eval_path=null", f"data.batch_size={batch_size}", f"train.device={device}"])
        env = init_distributed(cfg.train.device)
        spec, batches = synthetic_batches(data, t, batch_size, num_batches, table_scale, env)
        if threads:
            torch.set_num_threads(threads)
        return build_plain_step(cfg, spec, env, batches)

    return step_fn


def add_arguments(p: argparse.ArgumentParser) -> None:
    known = ", ".join(sorted(weighting_methods()))
    p.add_argument("--tasks", type=int, nargs="+", default=[8, 32, 64, 128])
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: all ({known}; on CUDA also {', '.join(CUDA_EXTRA_METHODS)}: GO4Align's paper "
                        "mode and its torch path beside the fused Triton step)")
    p.add_argument("--compile", nargs="+", default=["go4align"], metavar="METHOD",
                   help="methods also timed under torch.compile(fullgraph=True) (default: go4align; 'all' or 'none')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cuda-graph", action="store_true", help="also time each weighting step replayed from a CUDA graph")
    p.add_argument("--warmup", type=int, default=20, help="weighting calls before timing")
    p.add_argument("--iters", type=int, default=200, help="timed weighting calls (median)")
    p.add_argument("--no-step", action="store_true", help="time the weighting alone, no training step")
    p.add_argument("--config", default=str(CONFIGS / "synthetic.yaml"), help="training config of the benchmark model")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--table-scale", type=float, default=0.01, help="table size factor of the synthetic data")
    p.add_argument("--step-warmup", type=int, default=3)
    p.add_argument("--step-iters", type=int, default=20, help="timed training steps per T (median)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from recsys_mtl.train.commands import quiet_library_logs

    quiet_library_logs()
    if args.threads:
        torch.set_num_threads(args.threads)
    compiled: bool | list[str] = True if args.compile == ["all"] else [] if args.compile == ["none"] else args.compile
    with tempfile.TemporaryDirectory(prefix="bench-weighting-") as tmp:
        step_fn = None if args.no_step else benchmark_step_fn(args.config, args.batch_size, args.step_warmup + 4,
                                                               args.table_scale, args.device, Path(tmp), args.threads)
        print(f"training step: {args.config} model, batch {args.batch_size}, equal weights, median of "
              f"{args.step_iters} steps after {args.step_warmup}; weighting: median of {args.iters} calls after "
              f"{args.warmup}; GO4Align K={DEFAULT_KWARGS['go4align'](0)['num_groups']}", flush=True)
        rows = run_weighting_bench(step_fn, args.tasks, args.device, methods=args.methods, warmup=args.warmup,
                                   iters=args.iters, compiled=compiled, step_warmup=args.step_warmup,
                                   step_iters=args.step_iters, cuda_graph=args.cuda_graph)
    device = torch.device(args.device).type
    for r in rows:
        if r["method"] in ("go4align", "go4align@torch", "go4align@paper") and r["tasks"] == 64 and "ratio" in r:
            what, target = TARGETS.get(device, TARGETS["cpu"])
            best = min(r.get(k, float("inf")) for k in ("ratio", "compiled_ratio", "graph_ratio"))
            parts = [f"eager {100 * r['ratio']:.3f}%"]
            parts += [f"compiled {100 * r['compiled_ratio']:.3f}%"] if "compiled_ratio" in r else []
            parts += [f"CUDA graph {100 * r['graph_ratio']:.3f}%"] if "graph_ratio" in r else []
            print(f"{r['method']} at T=64: {', '.join(parts)} of a {r['step_us'] / 1e3:.1f} ms training step on {device} "
                  f"(target <= {100 * target:.0f}% {what}): {'met' if best <= target else 'NOT met'}")
    if device != "cuda":
        print("GPU part (CUDA graph, target <= 1% on an H100) not run: this run is on CPU")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
