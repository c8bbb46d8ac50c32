"""Build frozen dataclasses from plain mappings (what YAML/Hydra give), with errors people can act on.

`build(cls, mapping)` checks every key and type against the dataclass's annotations (nested
dataclasses, Optional, Literal, tuples of scalars, bool/int/float/str) and raises ConfigError
naming the dotted key, what is allowed and what was given, at the first problem.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A bad configuration value. The message names the key, what is allowed and what was given."""

    def __init__(self, key: str, allowed: str, given: Any) -> None:
        self.key, self.allowed, self.given = key, allowed, given
        super().__init__(f"config error at '{key}': expected {allowed}; got {given!r}")


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
    values = {}
    for name, value in mapping.items():
        values[name] = _coerce(hints[name], value, _join(prefix, name))
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
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
