"""Run logs: one file per run under `{output_dir}/logs/`, driver and worker messages together.

Worker messages reach the driver through Dask's log forwarding (see
`pipeline.runtime.execute.dask.cluster`) and land in the same file; the nanny's memory warnings
and restarts are `distributed` records logged in the driver process itself. The terminal shows
the pipeline's own lines only: Dask, bokeh and tornado records (any level; Dask adds stderr
handlers of its own, which `third_party_to_run_log` detaches while a cluster runs), their Python
warnings and the probe's details go to the run log. Only the file name carries the run id and
time; the records carry a time stamp because a log is not an artifact any stage depends on.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOG_DIR = Path("logs")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# loggers whose records go to the run log, at or above this level (the pipeline's own and
# Dask's at INFO; the dashboard's web stack and Python warnings from WARNING up)
_LOGGERS = {
    "pipeline": logging.INFO,
    "distributed": logging.INFO,
    "bokeh": logging.WARNING,
    "tornado": logging.WARNING,
    "py.warnings": logging.WARNING,
}
# packages whose log records and warnings never reach the terminal (the run log has them)
THIRD_PARTY = ("distributed", "bokeh", "tornado")
# loggers whose INFO records are details for the run log (the terminal gets a summary line)
DETAIL_LOGGERS = ("pipeline.probe",)
_open_logs: list[RunLog] = []  # the run logs open now, innermost last
# the name prefix of a driver thread that trains one model while others train beside it
LANE_THREAD = "qpipe-lane-"


def _is_third_party(record: logging.LogRecord) -> bool:
    if record.name.split(".")[0] in THIRD_PARTY:
        return True
    if record.name == "py.warnings":  # "<file>:<line>: <Category>: <text>" from a package of theirs
        path = str(record.args[0] if record.args else record.msg).split(":", 1)[0]
        return any(f"{os.sep}{package}{os.sep}" in path for package in THIRD_PARTY)
    return False


class TerminalFilter(logging.Filter):
    """For the terminal: no Dask/bokeh/tornado records or warnings, no probe details.

    A filter on the terminal handler, not a logger level: importing distributed sets its
    logger back to INFO, and the run log (a file handler) should keep those records.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_third_party(record):
            return False
        return not (record.name in DETAIL_LOGGERS and record.levelno < logging.WARNING)


class _TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is now: a live progress bar swaps in a proxy that prints each
    line above the bar, so log lines never overwrite it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def configure_terminal_logging() -> None:
    """The command line's stderr: the pipeline's INFO lines, warnings and errors; nothing of
    Dask, bokeh or tornado (see TerminalFilter); Python warnings through logging."""
    handler = _TerminalHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(TerminalFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_qpipe_terminal", False)]:
        root.removeHandler(old)
    handler._qpipe_terminal = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings become py.warnings records: routed like the rest


def current_log() -> Path | None:
    """The innermost run log being written now (named in summary lines), if any."""
    started = [run_log.path for run_log in _open_logs if run_log.started]
    return started[-1] if started else None


@contextmanager
def third_party_to_run_log() -> Iterator[Callable[[], None]]:
    """Detach the stderr handlers Dask and bokeh attach to their loggers (which do not
    propagate to the root's terminal handler), so their warnings and tracebacks (a port in
    use, "Worker process still alive ... killing", a browser that disconnects from the
    dashboard) reach only the run log; restored on exit. Yields a function that detaches
    those added since (bokeh adds its own when the dashboard starts)."""
    removed: list[tuple[logging.Logger, logging.Handler]] = []

    def detach() -> None:
        names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in THIRD_PARTY]
        for name in names:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                stream = getattr(handler, "stream", None)
                if type(handler) is logging.StreamHandler and stream in (
                    sys.stderr,
                    sys.__stderr__,
                ):
                    logger.removeHandler(handler)
                    removed.append((logger, handler))

    detach()
    try:
        yield detach
    finally:
        for logger, handler in removed:
            logger.addHandler(handler)


def new_run_id(prefix: str) -> str:
    """A run id unique on this machine: prefix, UTC time and pid."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"


class _Relay(logging.Handler):
    """Hand records to another handler (not a StreamHandler, so Dask does not re-level it)."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


class _RunFile(logging.Handler):
    """The run log's file, created by `start()`; records before it are held in memory (a run
    refused for bad input then leaves its output dir as it was)."""

    def __init__(self, path: Path, hold: bool) -> None:
        super().__init__()
        self.path = path
        self.file: logging.FileHandler | None = None
        self.held: list[logging.LogRecord] = []
        if not hold:
            self.start()

    def start(self) -> None:
        if self.file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(self.path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter(_FORMAT))
        for record in self.held:
            self.file.handle(record)
        self.held = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.handle(record)
        else:
            self.held.append(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


class _OwnLane(logging.Filter):
    """A run log opened in a lane keeps no record of another lane (each model's train log
    has its own lines, the cluster's and the workers')."""

    def __init__(self) -> None:
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.ident or not str(record.threadName).startswith(LANE_THREAD)


class RunLog:
    """Attach a file handler for one run; detach it on close (usable as a context manager).

    `hold=True`: the file (and logs/) is created only by `start()` (or `start_held_logs()`),
    with every record since the open; closed unstarted, it writes nothing.
    """

    def __init__(self, output_dir: str | Path, run_id: str, hold: bool = False) -> None:
        self.path = Path(output_dir) / LOG_DIR / f"{run_id}.log"
        self._file = _RunFile(self.path, hold)
        self._levels: dict[str, int] = {}
        # one relay per logger: LocalCluster(silence_logs=...) re-levels every StreamHandler
        # (FileHandler included) on the `distributed` logger, so records reach the file
        # through a plain Handler that it leaves alone
        self.handlers: dict[str, logging.Handler] = {}
        lane = threading.current_thread().name.startswith(LANE_THREAD)
        for name, level in _LOGGERS.items():
            handler = _Relay(self._file)
            handler.setLevel(level)  # Dask's INFO lines too: the file keeps them all
            if lane:
                handler.addFilter(_OwnLane())
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.level == logging.NOTSET or logger.level > level:
                logger.setLevel(level)
            logger.addHandler(handler)
            self.handlers[name] = handler
        _open_logs.append(self)

    @property
    def started(self) -> bool:
        return self._file.file is not None

    def start(self) -> None:
        self._file.start()

    def close(self) -> None:
        if self in _open_logs:
            _open_logs.remove(self)
        for name, level in self._levels.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self.handlers[name])
            logger.setLevel(level)
            self.handlers[name].close()
        self._file.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_held_logs() -> None:
    """Create the files of the run logs held so far (the run's input proved valid)."""
    for run_log in _open_logs:
        run_log.start()
