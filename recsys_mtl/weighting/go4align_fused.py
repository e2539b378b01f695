"""The fused GO4Align step (go4align_triton.py) as torch custom ops, and when GO4Align uses it.

A custom op keeps the Triton launch opaque to torch.compile(fullgraph=True) (a fake
implementation gives the output's shape) and declares the state buffers it updates in place,
so the step compiles and captures in a CUDA graph like the torch path. The kernel module is
looked up at each call.

GO4Align takes the fused step when triton is importable, T <= 256, the state is float32 and the
losses are on a CUDA device; on the CPU only when asked to (tests) and Triton's interpreter is on:
TRITON_INTERPRET=1 must be set before triton is imported (it decides how triton's own library
functions are decorated), which tests/conftest.py does on machines without CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

#: triton is an optional dependency: without it every device runs the torch path
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
#: the largest T the fused step takes; above it the torch path runs (its [T, T] tiles outgrow one program)
MAX_FUSED_TASKS = 256
_KERNELS = "recsys_mtl.weighting.go4align_triton"


def triton_interpreter_on() -> bool:
    """TRITON_INTERPRET as Triton reads it (it decides when the kernels are decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def fused_step_applies(losses: torch.Tensor, state: torch.Tensor, num_tasks: int, on_cpu: bool = False) -> bool:
    """Whether the fused step runs for these losses (decided by device and dtype, never by values).

    On the CPU only with `on_cpu` and Triton's interpreter on (TRITON_INTERPRET=1 when triton was imported).
    """
    if not TRITON_AVAILABLE or num_tasks > MAX_FUSED_TASKS or state.dtype != torch.float32:
        return False
    if losses.is_cuda:
        return True
    return on_cpu and losses.device.type == "cpu" and not torch.compiler.is_compiling() and triton_interpreter_on()


def _kernels():
    module = sys.modules.get(_KERNELS)
    return module if module is not None else importlib.import_module(_KERNELS)


def _launch(kernel, args: tuple, num_tasks: int, num_groups: int, device: torch.device, **constants) -> None:
    block_t, block_k, warps = _kernels().block_sizes(num_tasks, num_groups)
    if device.type == "cuda":
        with torch.cuda.device(device):  # Triton launches on the current device
            kernel[(1,)](*args, **constants, BLOCK_T=block_t, BLOCK_K=block_k, num_warps=warps)
    else:
        kernel[(1,)](*args, **constants, BLOCK_T=block_t, BLOCK_K=block_k, num_warps=warps)


@torch.library.custom_op("recsys_mtl::go4align_paper_step", mutates_args=("cum_loss", "group", "gamma"))
def go4align_paper_step(losses: torch.Tensor, present: torch.Tensor, cum_loss: torch.Tensor, group: torch.Tensor,
                        gamma: torch.Tensor, num_groups: int, beta: float, min_loss: float) -> torch.Tensor:
    """One `paper`-mode step: updates cum_loss, group and gamma in place, returns the float32 weights."""
    num_tasks = losses.shape[0]
    weights = torch.empty_like(cum_loss)
    args = (losses.contiguous(), present.contiguous(), cum_loss, group, gamma, weights,
            num_tasks, min(num_groups, num_tasks), beta, min_loss)
    _launch(_kernels().go4align_paper_kernel, args, num_tasks, num_groups, losses.device)
    return weights


@go4align_paper_step.register_fake
def _go4align_paper_step_shape(losses, present, cum_loss, group, gamma, num_groups, beta, min_loss):
    return torch.empty_like(cum_loss)


@torch.library.custom_op("recsys_mtl::go4align_rec_step",
                         mutates_args=("risk_avg", "risk_updates", "cum_risk", "label_count", "label_mean", "label_m2",
                                       "prior", "risk", "group", "gamma"))
def go4align_rec_step(losses: torch.Tensor, present: torch.Tensor, count: torch.Tensor | None,
                      total: torch.Tensor | None, total_sq: torch.Tensor | None, binary: torch.Tensor | None,
                      risk_avg: torch.Tensor, risk_updates: torch.Tensor, cum_risk: torch.Tensor,
                      label_count: torch.Tensor, label_mean: torch.Tensor, label_m2: torch.Tensor,
                      prior: torch.Tensor, risk: torch.Tensor, group: torch.Tensor, gamma: torch.Tensor,
                      num_groups: int, beta: float, alpha: float, ema_decay: float, max_ratio: float,
                      risk_floor: float) -> torch.Tensor:
    """One `rec`-mode step (label statistics optional: all four or none); updates the state in place,
    returns the float32 weights."""
    num_tasks = losses.shape[0]
    weights = torch.empty_like(risk_avg)
    has_stats = count is not None
    stats = (count, total, total_sq, binary) if has_stats else (losses, losses, losses, present)  # unread stand-ins
    args = (losses.contiguous(), present.contiguous(), *(t.contiguous() for t in stats),
            risk_avg, risk_updates, cum_risk, label_count, label_mean, label_m2, prior, risk, group, gamma, weights,
            num_tasks, min(num_groups, num_tasks), beta, alpha, ema_decay, 1.0 - ema_decay, max_ratio, risk_floor)
    _launch(_kernels().go4align_rec_kernel, args, num_tasks, num_groups, losses.device, HAS_STATS=has_stats)
    return weights


@go4align_rec_step.register_fake
def _go4align_rec_step_shape(losses, present, count, total, total_sq, binary, risk_avg, risk_updates, cum_risk,
                             label_count, label_mean, label_m2, prior, risk, group, gamma, num_groups, beta, alpha,
                             ema_decay, max_ratio, risk_floor):
    return torch.empty_like(risk_avg)
