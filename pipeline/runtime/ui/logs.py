"""Run logs: one file per run under `{output_dir}/logs/`, driver and worker messages together.

Worker messages reach the driver through Dask's log forwarding (see `pipeline.runtime.execute.cluster`) and
land in the same file; the nanny's memory warnings and restarts are `distributed` records
logged in the driver process itself. Dask's INFO lines go to this file only: the terminal
handler (`configure_terminal_logging`) hides them. Only the file name carries the run id and time; the
records carry a time stamp because a log is not an artifact any stage depends on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from pipeline.runtime.ui.notebook import NotebookBar, in_notebook

LOG_DIR = Path("logs")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# loggers whose records go to the run log (the pipeline's own and Dask's)
_LOGGERS = ("pipeline", "distributed")
_progress_log = logging.getLogger("pipeline.train")


class HideDaskInfo(logging.Filter):
    """For the terminal: drop Dask's INFO chatter (`distributed.*` below WARNING).

    A filter on the terminal handler, not a logger level: importing distributed sets its
    logger back to INFO, and the run log (a file handler) should keep those records.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        is_dask = record.name == "distributed" or record.name.startswith("distributed.")
        return not is_dask or record.levelno >= logging.WARNING


def configure_terminal_logging() -> None:
    """The command line's stderr: the pipeline's INFO lines, warnings and errors, no Dask INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(HideDaskInfo())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_qpipe_terminal", False)]:
        root.removeHandler(old)
    handler._qpipe_terminal = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)


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

    def close(self) -> None:
        self.target.close()
        super().close()


class RunLog:
    """Attach a file handler for one run; detach it on close (usable as a context manager)."""

    def __init__(self, output_dir: str | Path, run_id: str) -> None:
        self.path = Path(output_dir) / LOG_DIR / f"{run_id}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._levels: dict[str, int] = {}
        # one handler per logger: LocalCluster(silence_logs=...) re-levels every StreamHandler
        # (FileHandler included) on the `distributed` logger, so Dask's records reach the file
        # through a plain Handler that it leaves alone
        self.handlers: dict[str, logging.Handler] = {}
        for name in _LOGGERS:
            file_handler = logging.FileHandler(self.path, encoding="utf-8")
            file_handler.setFormatter(logging.Formatter(_FORMAT))
            handler = file_handler if name == "pipeline" else _Relay(file_handler)
            handler.setLevel(logging.INFO)  # Dask's INFO lines too: the file keeps them all
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(handler)
            self.handlers[name] = handler

    def close(self) -> None:
        for name, level in self._levels.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self.handlers[name])
            logger.setLevel(level)
            self.handlers[name].close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgressReporter:
    """When enabled: rich's progress bar on a TTY, an in-place bar in a Jupyter notebook;
    otherwise a log line about every 10 % / 30 s."""

    def __init__(self, model: str, total: int, enabled: bool) -> None:
        self.model, self.total = model, total
        self.rich = None
        self.notebook: NotebookBar | None = None
        self.failed = 0
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.done = self.logged = 0
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.rich = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} fits/s"),
                TextColumn("failed {task.fields[failed]}"),
                TimeRemainingColumn(),
            )
            self.task = self.rich.add_task(model, total=total, rate=0.0, failed=0)
        elif enabled and in_notebook():
            self.notebook = NotebookBar(model, total)

    def __enter__(self) -> ProgressReporter:
        if self.rich is not None:
            self.rich.start()
        return self

    def update(self, advance: int, trained: int, failed: int) -> None:
        self.done += advance
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self.failed = failed
        if self.rich is not None:
            self.rich.update(self.task, advance=advance, rate=rate, failed=failed)
            return
        if self.notebook is not None:
            self.notebook.update(self.done, rate, failed)
            return
        step = max(1, self.total // 10)
        if (
            self.done == self.total
            or elapsed - self.last > 30
            or self.done // step > self.logged // step
        ):
            self.last, self.logged = elapsed, self.done
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            _progress_log.info(
                "%s: %d/%d fits, %.1f fits/s, %d failed, ETA %.0f s",
                self.model,
                self.done,
                self.total,
                rate,
                failed,
                eta,
            )

    def __exit__(self, *exc: object) -> None:
        if self.rich is not None:
            self.rich.stop()
        if self.notebook is not None:  # the last state, even if redraws were throttled
            elapsed = time.perf_counter() - self.t0
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self.notebook.update(self.done, rate, self.failed, final=True)
