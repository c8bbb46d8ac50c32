"""Allowed ranges of parameters, declared once and checked wherever the value arrives.

A `Rule` is attached to a config dataclass field (`field(metadata=rule(...))`); the config
builder (pipeline.config.structured) checks it when a study is validated, and a model's own
kernel may check the same Rule object on a direct call, so no range is written twice.

Imports: pipeline.errors only (the ConfigError every layer raises).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError

RULE = "rule"  # the field-metadata key


@dataclass(frozen=True)
class Rule:
    """`test(value)` must hold; `allowed` says so in words; `each`: test every list element."""

    test: Callable[[Any], bool]
    allowed: str
    each: bool = False
    non_empty: bool = False  # a list rule: the list may not be empty

    def check(self, key: str, value: Any) -> Any:
        """Return `value`, or raise ConfigError(key, allowed, value) (per element with `each`)."""
        if self.each:
            items = list(value)
            if self.non_empty and not items:
                raise ConfigError(key, f"a non-empty list of {self.allowed}", items)
            for i, item in enumerate(items):
                if not _holds(self.test, item):
                    raise ConfigError(f"{key}[{i}]", self.allowed, item)
            return value
        if not _holds(self.test, value):
            raise ConfigError(key, self.allowed, value)
        return value


def rule(
    test: Callable[[Any], bool], allowed: str, *, each: bool = False, non_empty: bool = False
) -> dict[str, Rule]:
    """Field metadata carrying a Rule: `x: int = field(metadata=rule(lambda v: v >= 1, ...))`."""
    return {RULE: Rule(test, allowed, each, non_empty)}


def at_least(
    minimum: float, allowed: str, *, each: bool = False, non_empty: bool = False
) -> dict[str, Rule]:
    """Field metadata: a finite number >= minimum (bool is not a number here)."""
    return rule(lambda v: is_number(v) and v >= minimum, allowed, each=each, non_empty=non_empty)


def integer_rule(
    minimum: int,
    allowed: str,
    *,
    each: bool = False,
    non_empty: bool = False,
    maximum: int | None = None,
) -> Rule:
    """A Rule: an integer >= minimum (and <= maximum when given), for config fields and the
    kernels' direct callers."""
    return Rule(
        lambda v: is_integer(v) and v >= minimum and (maximum is None or v <= maximum),
        allowed,
        each,
        non_empty,
    )


def number_rule(test: Callable[[float], bool], allowed: str, *, each: bool = False,
                non_empty: bool = False) -> Rule:  # fmt: skip
    """A Rule: a finite number for which `test` holds."""
    return Rule(lambda v: is_number(v) and test(v), allowed, each, non_empty)


def declared(one: Rule) -> dict[str, Rule]:
    """Field metadata carrying an existing Rule (shared with a kernel's own check)."""
    return {RULE: one}


def is_integer(value: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (numpy's too), not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# quantile levels: shared by data.quantiles and every kernel's `quantiles` argument
QUANTILE_LEVEL = number_rule(
    lambda q: 0.0 < q < 1.0, "a quantile strictly inside (0, 1)", each=True, non_empty=True
)


def check_quantiles(quantiles: Any, key: str = "quantiles") -> tuple[float, ...]:
    """Quantile levels: a non-empty list of numbers strictly inside (0, 1), strictly increasing."""
    try:
        levels = list(quantiles)
    except TypeError:
        raise ConfigError(key, "a list of quantile levels", quantiles) from None
    QUANTILE_LEVEL.check(key, levels)
    levels = [float(q) for q in levels]
    if levels != sorted(set(levels)):
        raise ConfigError(key, "strictly increasing quantile levels", levels)
    return tuple(levels)


def _holds(test: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):
        return False
