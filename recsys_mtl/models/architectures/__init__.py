"""Multi-task architectures: x[B, F] -> per-task representations [B, T, H].

One registry maps the config name (`model.architecture`) to the class. Each
class is built as `cls(in_dim, num_tasks, model_config)` and exposes `out_dim`.
"""

from __future__ import annotations

from torch import nn

from recsys_mtl.models.architectures.mmoe import MMoE
from recsys_mtl.models.architectures.ple import PLE
from recsys_mtl.models.architectures.shared_bottom import SharedBottom

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
}

__all__ = ["ARCHITECTURES", "SharedBottom", "MMoE", "PLE"]
