"""Build frozen dataclasses from plain mappings (what YAML/Hydra give), with errors people can act on.

`build(cls, mapping)` checks every key and type against the dataclass's annotations (nested
dataclasses, Optional, Literal, tuples of scalars, bool/int/float/str), then each field's
declared range (a `pipeline.models.solvers.rules.Rule` in the field's metadata), and raises ConfigError
naming the dotted key, what is allowed and what was given, at the first problem.

The dataclasses carry no defaults: every default lives in `conf/` (one source), so a mapping
must give every key; `pipeline.config.defaults.with_defaults` fills a partial mapping from
`conf/`. A class with a `from_mapping(mapping, prefix)` classmethod builds itself (ModelsConfig,
whose keys are model names).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from pipeline.errors import ConfigError
from pipeline.models.solvers.rules import RULE

__all__ = ["ConfigError", "build", "first_line"]


def first_line(error: Exception) -> str:
    """The first line of an exception's message (Hydra's errors run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def build(cls: type, mapping: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from `mapping`; unknown keys and wrong types raise ConfigError."""
    return _build(cls, mapping, prefix)


def _build(cls: type, mapping: Any, prefix: str) -> Any:
    if not isinstance(mapping, Mapping):
        raise ConfigError(prefix or "<root>", f"a mapping of {cls.__name__} keys", mapping)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        key = _join(prefix, str(unknown[0]))
        raise ConfigError(key, f"one of the known keys {sorted(fields)}", unknown[0])
    missing = [name for name in fields if name not in mapping]
    if missing:
        raise ConfigError(
            _join(prefix, missing[0]),
            "a value (conf/ holds every default: compose it, or see `python -m pipeline "
            "write-config -`)",
            "nothing",
        )
    values = {}
    for name, value in mapping.items():
        key = _join(prefix, name)
        values[name] = _coerce(hints[name], value, key)
        declared = fields[name].metadata.get(RULE)
        if declared is not None and values[name] is not None:
            declared.check(key, values[name])
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hasattr(hint, "from_mapping"):
        return hint.from_mapping(value, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(key, _describe(hint), value)
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, _describe(hint), value)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(key, f"one of {list(allowed)}", value)
        return value
    if origin is tuple:
        (item_hint, _ellipsis) = typing.get_args(hint)
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(key, _describe(hint), value)
        return tuple(_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, "an integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, "a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, "a string", value)
        return value
    raise TypeError(f"unsupported config type {hint!r} at {key}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
