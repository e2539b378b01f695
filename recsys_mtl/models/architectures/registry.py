"""The architecture registry: config name (`model.architecture`) -> class, like weighting's.

An architecture is an `nn.Module` built as `cls(in_dim, num_tasks, **args)` that maps x[B, F] to per-task
representations [B, T, H] and exposes `out_dim` (H). Its keyword arguments are its settings (`model.args` in a
config); they are checked against its signature when the config loads. `dropout`, if it takes one, defaults to
`model.dropout`.

    @register_architecture("my_arch")
    class MyArch(nn.Module):
        def __init__(self, in_dim: int, num_tasks: int, *, hidden: list[int] = [64], dropout: float = 0.0): ...
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

_REGISTRY: dict[str, type] = {}


def register_architecture(name: str) -> Callable[[type], type]:
    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def architectures() -> dict[str, type]:
    """Every registered architecture (the package's own are registered when recsys_mtl.models loads)."""
    import recsys_mtl.models.architectures  # noqa: F401 - registers the built-in ones

    return dict(_REGISTRY)


def architecture_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments `name`'s constructor takes (after in_dim and num_tasks)."""
    cls = architectures()[name]
    return {p.name: p for p in list(inspect.signature(cls.__init__).parameters.values())[3:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_architecture_args(name: str, args: dict[str, Any]) -> None:
    """ValueError unless `name` is registered and takes every key of `args`."""
    known = architectures()
    if name not in known:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(known))}")
    params = architecture_parameters(name)
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"architecture {name!r}: unknown argument(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(params) or 'none'}")


def build_architecture(name: str, in_dim: int, num_tasks: int, args: dict[str, Any], dropout: float):
    check_architecture_args(name, args)
    if "dropout" in architecture_parameters(name):
        args = {"dropout": dropout, **args}
    return _REGISTRY[name](in_dim, num_tasks, **args)


__all__ = ["register_architecture", "architectures", "architecture_parameters", "check_architecture_args",
           "build_architecture"]
