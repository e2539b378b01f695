"""Cheap process and host metrics read from /proc (psutil is not a dependency).

Names: system/rss_mb, system/cpu_percent (this process, 100 = one core busy),
system/mem_used_percent, system/load_1m, and with CUDA initialised
system/gpu_mem_allocated_mb and system/gpu_max_mem_allocated_mb.
"""

from __future__ import annotations

import os
import sys
import time


class SystemSampler:
    def __init__(self) -> None:
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self._tick = os.sysconf("SC_CLK_TCK")
        self._last = self._cpu_seconds(), time.monotonic()

    def _cpu_seconds(self) -> float | None:
        try:
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
        except (OSError, IndexError, ValueError):
            return None

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            with open("/proc/self/statm") as f:
                out["system/rss_mb"] = int(f.read().split()[1]) * self._page_mb
        except (OSError, IndexError, ValueError):
            pass
        cpu, now = self._cpu_seconds(), time.monotonic()
        last_cpu, last_t = self._last
        if cpu is not None and last_cpu is not None and now > last_t:
            out["system/cpu_percent"] = 100.0 * (cpu - last_cpu) / (now - last_t)
        self._last = cpu, now
        try:
            info = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    key, value = line.split(":", 1)
                    info[key] = int(value.split()[0])
            out["system/mem_used_percent"] = 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])
        except (OSError, KeyError, ValueError):
            pass
        try:
            out["system/load_1m"] = os.getloadavg()[0]
        except OSError:
            pass
        torch = sys.modules.get("torch")  # never import torch (or initialise CUDA) just for this
        if torch is not None and torch.cuda.is_initialized():
            out["system/gpu_mem_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            out["system/gpu_max_mem_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out
