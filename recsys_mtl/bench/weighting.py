"""Cost of the task-weighting step, per method and number of tasks T.

For every registered method and each T, times one weighting step (forward, plus
`post_step` for methods that need re-evaluated losses; the extra forward pass
FAMO needs for those losses is the trainer's cost and is NOT included) as the
median over many calls after a warm-up, eagerly and optionally under
torch.compile(fullgraph=True). If `step_fn` is given, `step_fn(T)` must return a
zero-argument callable that runs one training step with T tasks (the trainer's
hook: build the model once inside step_fn, return the closure); its median time
is measured the same way and the table shows weighting time / step time.

    python -m recsys_mtl.bench.weighting --tasks 8 64 --iters 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from recsys_mtl.weighting import build_weighting, weighting_methods

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


def _weighting_step(name: str, t: int, device: torch.device, compiled: bool,
                    method_kwargs: dict[str, dict[str, Any]] | None) -> Callable[[], Any]:
    kwargs = (method_kwargs or {}).get(name, DEFAULT_KWARGS.get(name, lambda _t: {})(t))
    method = build_weighting(name, t, **kwargs).to(device)
    gen = torch.Generator().manual_seed(0)
    losses = (torch.rand(t, generator=gen) + 0.1).to(device)
    present = (torch.rand(t, generator=gen) < 0.9).to(device)
    after = losses * 0.9
    forward, post = method, method.post_step
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


def run_weighting_bench(
    step_fn: Callable[[int], Callable[[], Any]] | None = None,
    tasks: Sequence[int] = (8, 32, 64, 128),
    device: str | torch.device = "cpu",
    *,
    methods: Sequence[str] | None = None,
    warmup: int = 20,
    iters: int = 200,
    compiled: bool = False,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    print_table: bool = True,
) -> list[dict[str, Any]]:
    """Time every (method, T); returns one row per pair and prints a table.

    Rows: method, tasks, eager_us (median µs per weighting step), compiled_us (if `compiled`),
    step_us and ratio = eager_us / step_us (if `step_fn`).
    """
    device = torch.device(device)
    names = sorted(weighting_methods()) if methods is None else list(methods)
    rows = []
    for t in tasks:
        step_us = None
        if step_fn is not None:
            step_us = time_call(step_fn(t), device, warmup, iters) * 1e6
        for name in names:
            row: dict[str, Any] = {"method": name, "tasks": t}
            row["eager_us"] = time_call(_weighting_step(name, t, device, False, method_kwargs), device, warmup, iters) * 1e6
            if compiled:
                torch._dynamo.reset()
                fn = _weighting_step(name, t, device, True, method_kwargs)
                row["compiled_us"] = time_call(fn, device, warmup, iters) * 1e6
            if step_us is not None:
                row["step_us"] = step_us
                row["ratio"] = row["eager_us"] / step_us
            rows.append(row)
    if print_table:
        print(format_table(rows, device))
    return rows


def format_table(rows: list[dict[str, Any]], device: torch.device) -> str:
    cols = [c for c in ("method", "tasks", "eager_us", "compiled_us", "step_us", "ratio") if any(c in r for r in rows)]
    header = f"weighting step, median per call on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    lines = [header, "  ".join(f"{c:>19}" if c == "method" else f"{c:>11}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "method":
                cells.append(f"{v:>19}")
            elif v is None:
                cells.append(f"{'-':>11}")
            elif c == "ratio":
                cells.append(f"{v:>11.4f}")
            elif isinstance(v, float):
                cells.append(f"{v:>11.1f}")
            else:
                cells.append(f"{v:>11}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--methods", nargs="+", default=None, help=f"default: all ({', '.join(sorted(weighting_methods()))})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--compiled", action="store_true", help="also time torch.compile(fullgraph=True) (slow to build)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_weighting_bench(tasks=args.tasks, device=args.device, methods=args.methods, warmup=args.warmup,
                        iters=args.iters, compiled=args.compiled)


if __name__ == "__main__":
    main()
