"""Plain-Python float64 references for the weighting tests (no torch, no code shared with the package)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence


def set_partitions(items: Sequence[int], max_blocks: int) -> Iterator[list[list[int]]]:
    """Every partition of `items` into at most `max_blocks` non-empty blocks (no ordering assumed)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest, max_blocks):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        if len(part) < max_blocks:
            yield [[first]] + part


def sse(values: Sequence[float]) -> float:
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values)


def optimal_partitions(x: dict[int, float], k: int, rel_tol: float = 1e-9) -> tuple[float, list[list[list[int]]]]:
    """Brute force over all set partitions of the keys of x into <= k blocks: (best cost, all optimal partitions)."""
    scored = [(sum(sse([x[i] for i in block]) for block in part), part) for part in set_partitions(sorted(x), k)]
    best = min(c for c, _ in scored)
    tol = rel_tol * (1.0 + abs(best)) + 1e-15
    return best, [part for c, part in scored if c <= best + tol]


def partition_weights(x: dict[int, float], part: list[list[int]], num_tasks: int) -> list[float]:
    w = [0.0] * num_tasks
    for block in part:
        centre = sum(x[i] for i in block) / len(block)
        for i in block:
            w[i] = centre
    return w


class GO4AlignReference:
    """ARCHITECTURE.md "GO4Align, exactly", literally: Q by its normalised multiplicative recurrence."""

    def __init__(self, num_tasks: int, num_groups: int, beta: float, eps: float = 1e-12, min_loss: float = 1e-6) -> None:
        self.t, self.k, self.beta, self.eps, self.min_loss = num_tasks, num_groups, beta, eps, min_loss
        self.q = [1.0 / num_tasks] * num_tasks  # Q_0 = 1/M

    def step(self, losses: Sequence[float], present: Sequence[bool]) -> list[list[float]]:
        """Returns every weight vector an optimal grouping gives (one unless the optimum is tied)."""
        present = [bool(p) and float(l) > self.min_loss for l, p in zip(losses, present)]  # L_m = 0 guard
        loss = [float(l) if p else 0.0 for l, p in zip(losses, present)]
        total = sum(loss)
        p_scale = [total / max(l, self.eps) for l in loss]
        q = [qm * math.exp(-self.beta * l) for qm, l in zip(self.q, loss)]  # absent: L = 0, factor 1
        z = sum(q)
        self.q = [v / z for v in q]
        gamma = {m: p_scale[m] * self.q[m] for m in range(self.t) if present[m]}
        if not gamma:
            return [[0.0] * self.t]
        _, parts = optimal_partitions(gamma, self.k)
        return [partition_weights(gamma, part, self.t) for part in parts]
