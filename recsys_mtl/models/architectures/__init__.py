"""Multi-task architectures: x[B, F] -> per-task representations [B, T, H].

Each registers itself with `@register_architecture(NAME)` (registry.py); a config chooses one with
`model.architecture: NAME` and gives its constructor arguments in `model.args`. Importing this package registers the
built-in ones.
"""

from __future__ import annotations

# registered in this order (the README's table follows it): the simplest first
from recsys_mtl.models.architectures.shared_bottom import SharedBottom
from recsys_mtl.models.architectures.mmoe import MMoE
from recsys_mtl.models.architectures.ple import PLE
from recsys_mtl.models.architectures.registry import (architectures, build_architecture, check_architecture_args,
                                                      register_architecture)

#: config name -> class (a snapshot of the registry once the built-in ones are registered)
ARCHITECTURES = architectures()

__all__ = ["ARCHITECTURES", "SharedBottom", "MMoE", "PLE", "register_architecture", "architectures",
           "build_architecture", "check_architecture_args"]
