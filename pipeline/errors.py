"""The product's errors: one base class, `QpipeError`, below every layer.

Every error the command line turns into exit code 2 and one line (bad config, bad data, an
output dir that cannot be written or is busy) is a QpipeError with that line as its message,
so a library caller catches one class. ConfigError lives here (models declare their parameter
ranges with it, config validates with it), so no layer imports another to report a bad value.
"""

from __future__ import annotations

from typing import Any


class QpipeError(Exception):
    """Base class of qpipe's errors; str(error) is the one line the command line prints."""


class RunFailed(QpipeError):
    """A study ran to the end but some fits failed (exit code 1 at the CLI).

    `result` holds what was written (forecasts/missing.parquet lists the fits without one).
    """

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class SchedulerLost(RunFailed):
    """The driver lost its connection to the Dask scheduler mid-train (a scheduler restarted
    or its machine lost): the run stops, progress saved, exit code 1; a rerun resumes."""


class NoForecasts(RunFailed):
    """A study whose train gave no forecast at all (every fit failed, or gave NaN): nothing to
    evaluate. Exit code 1 at the CLI, like any failed fit; the message says where the errors are.
    """


class ConfigError(QpipeError, ValueError):
    """A bad configuration value. The message names the key, what is allowed and what was given."""

    def __init__(self, key: str, allowed: str, given: Any) -> None:
        self.key, self.allowed, self.given = key, allowed, given
        super().__init__(f"config error at '{key}': expected {allowed}; got {given!r}")


class OutputError(QpipeError, RuntimeError):
    """An output location that cannot be written (a file in the way, no permission, disk full).

    The message names the path, the cause and what to do (exit code 2 at the CLI).
    """
