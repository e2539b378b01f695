"""The one config loader: YAML -> frozen dataclasses, with errors that name the file and key.

Every config object in the project is a dataclass; `load_yaml(path, Cls)` and
`from_dict(Cls, data, source)` validate types, reject unknown keys (with a
did-you-mean), and fill defaults. A dataclass may define `validate(self, where)`
for cross-field checks; it raises `ConfigError` via `where.error(...)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


#: a number in exponent form that YAML 1.1 (PyYAML) reads as a string: `1e-4`, `2.5e3` (it wants `1.0e-4`, `2.5e+3`)
_EXPONENT_NUMBER = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+")


def as_number(value: Any) -> Any:
    """`value`, or the float an exponent-form string such as '1e-4' means; for settings that must be numbers only
    (a string setting keeps such text, e.g. a git hash '4921e07')."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        return float(value.replace("_", ""))
    return value


class ConfigError(ValueError):
    """A config or feature-spec problem. The message names the file, the key and what was expected.

    `problems` holds each problem's line; a config with several problems is one error listing them all
    (a new user fixes them in one go, not one run at a time)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]

    @classmethod
    def of(cls, problems: list[str]) -> "ConfigError":
        if len(problems) == 1:
            return cls(problems[0])
        return cls(f"{len(problems)} problems:\n  " + "\n  ".join(problems), problems)

    def __reduce__(self):  # pickled between ranks (computed_on_rank0): keep the problems
        return (type(self), (str(self), self.problems))


@dataclasses.dataclass(frozen=True)
class Where:
    """A position inside a config document, used to build error messages."""

    source: str
    path: tuple[str, ...] = ()

    def child(self, key: str | int) -> "Where":
        return Where(self.source, self.path + (str(key) if isinstance(key, str) else f"[{key}]",))

    def __str__(self) -> str:
        key = ""
        for p in self.path:
            key += p if p.startswith("[") else (f".{p}" if key else p)
        return f"{self.source}: {key}" if key else self.source

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self}: {message}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of str to {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _each(convert: Any, items: list) -> list:
    """`convert` of every item, raising one ConfigError with every item's problems."""
    out, problems = [], []
    for item in items:
        try:
            out.append(convert(item))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError.of(problems)
    return out


def _convert(tp: Any, value: Any, where: Where) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise where.error(f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise where.error(f"expected one of {_type_name(tp)}, got {_describe(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise where.error(f"expected {_type_name(tp)}, got {_describe(value)}")
        (item_tp,) = get_args(tp)
        return _each(lambda item: _convert(item_tp, item[1], where.child(item[0])), list(enumerate(value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(f"expected {_type_name(tp)}, got {_describe(value)}")
        _, val_tp = get_args(tp)
        for k in value:
            if not isinstance(k, str):
                raise where.error(f"keys must be strings, got {_describe(k)}")
        converted = _each(lambda item: _convert(val_tp, item[1], where.child(item[0])), list(value.items()))
        return dict(zip(value, converted))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise where.error(f"expected one of {_type_name(tp)}, got {_describe(value)}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise where.error(f"expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise where.error(f"expected an integer, got {_describe(value)}")
    if tp is float:
        value = as_number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise where.error(f"expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise where.error(f"expected a string, got {_describe(value)}")
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def from_dict(cls: type[T], data: Any, where: Where | str = "<config>") -> T:
    """Build dataclass `cls` from a plain mapping, validating every key."""
    if isinstance(where, str):
        where = Where(where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise where.error(f"expected {_type_name(cls)}, got {_describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems: list[str] = []  # every key's problem, reported together
    for key in (k for k in data if k not in fields):
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(str(where.child(str(key)).error(
            f"unknown key{hint}; allowed keys: {', '.join(sorted(fields))}"
        )))
    kwargs = {}
    buildable = True  # every value converted and every required key given: the mapping's own checks can run
    for name, field in fields.items():
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], where.child(name))
            except ConfigError as exc:
                problems.extend(exc.problems)
                buildable = False
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(str(where.error(f"missing required key {name!r} ({_type_name(hints[name])})")))
            buildable = False
    if not buildable:
        raise ConfigError.of(problems)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate(where)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError.of(problems)
    return obj


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning I/O and syntax errors into ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{at}: {yaml_problem(exc)}") from None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (the same key twice in one mapping)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: Exception) -> str:
    """The short reason of a yaml.YAMLError (its `problem`, else its first line)."""
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]


def load_yaml(path: str | Path, cls: type[T], path_keys: Sequence[tuple[str, ...]] = ()) -> T:
    """`cls` from the YAML file `path`; the settings named by `path_keys` ((section, ..., key) each) are paths
    written relative to the file, made absolute here (`resolve_paths`)."""
    data = read_yaml(path)
    if path_keys:
        resolve_paths(data, Path(path).parent, path_keys)
    return from_dict(cls, data, Where(str(path)))


def resolve_paths(data: Any, base: Path, path_keys: Sequence[tuple[str, ...]]) -> None:
    """Make each relative local path setting in `data` (a config's raw mapping) absolute against `base`, in
    place: the settings at `path_keys` ((section, ..., key) each), a string or a list of strings. URIs,
    absolute paths and values of other types (the loader reports those) are left alone."""
    def resolved(value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
            return os.path.abspath(base / value)
        return value

    for *sections, key in path_keys:
        node = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        value = node[key]
        node[key] = [resolved(v) for v in value] if isinstance(value, list) else resolved(value)


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config object (for logging, artifacts and round trips)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def to_yaml(obj: Any) -> str:
    """YAML of `to_dict(obj)` in field order: what `read_yaml` + `from_dict` read back."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists of mappings are keyed by index."""
    data = to_dict(obj)
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = data
    return out


__all__ = ["ConfigError", "Where", "from_dict", "load_yaml", "read_yaml", "resolve_paths", "yaml_problem", "to_dict", "to_yaml", "flatten"]
