"""The configuration error every layer raises for a bad setting (exit code 2 at the CLI).

It lives below every layer (models declare their parameter ranges with it, config validates
with it), so no layer has to import another just to report a bad value.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad configuration value. The message names the key, what is allowed and what was given."""

    def __init__(self, key: str, allowed: str, given: Any) -> None:
        self.key, self.allowed, self.given = key, allowed, given
        super().__init__(f"config error at '{key}': expected {allowed}; got {given!r}")


class OutputError(RuntimeError):
    """An output location that cannot be written (a file in the way, no permission, disk full).

    The message names the path, the cause and what to do (exit code 2 at the CLI).
    """
