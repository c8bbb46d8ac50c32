"""The progress bar of a model's train: rich's bar on a TTY (one live display for every model
training side by side), an in-place bar in a Jupyter notebook (notebook.py), else a log line
about every 10 % or 30 s on the `pipeline.train` logger (the run log and the terminal)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from pipeline.runtime.ui.notebook import NotebookBar, in_notebook

_progress_log = logging.getLogger("pipeline.train")


class ProgressReporter:
    """When enabled: rich's progress bar on a TTY, an in-place bar in a Jupyter notebook;
    otherwise a log line about every 10 % / 30 s.

    The bar draws on stderr; while it is live, stderr is a proxy that prints each line above
    the bar (the terminal handler writes to the current sys.stderr), so log lines never
    overwrite it. Each column says what it counts. Models training side by side share one
    live display, a row each (two would each swap stderr and restore the other's proxy).
    """

    def __init__(self, model: str, total: int, enabled: bool, console: Any = None) -> None:
        self.model, self.total = model, total
        self.rich: Any = None
        self.console = console
        self.use_rich = enabled and (console is not None or sys.stderr.isatty())
        self.notebook: NotebookBar | None = None
        self.failed = 0
        self.t0 = time.perf_counter()
        # when this model's first task started: its rate and ETA count from then, not from
        # the reporter's start (a model waiting behind another's tasks on a shared cluster
        # would show a low rate and a long ETA); None until a result tells it
        self.began: float | None = None
        self.last = 0.0
        self.done = self.logged = 0
        if not self.use_rich and enabled and in_notebook():
            self.notebook = NotebookBar(model, total)

    def __enter__(self) -> ProgressReporter:
        if self.use_rich:
            self.rich = _live_bar.join(self.console)
            self.task = self.rich.add_task(self.model, total=self.total, rate=0.0, failed=0)
        return self

    def update(self, advance: int, trained: int, failed: int, busy_s: float | None = None) -> None:
        """`advance` more fits done; `busy_s`: the seconds the task that did them ran (its
        start, the first time, is when this model's work began)."""
        self.done += advance
        now = time.perf_counter()
        if self.began is None and busy_s is not None:
            self.began = max(self.t0, now - busy_s)
        elapsed = now - self.t0
        rate = self._rate(now)
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
            _live_bar.leave()
        if self.notebook is not None:  # the last state, even if redraws were throttled
            self.notebook.update(
                self.done, self._rate(time.perf_counter()), self.failed, final=True
            )

    def _rate(self, now: float) -> float:
        """Fits per second since this model's first task started (the reporter's start
        until a result tells when that was)."""
        elapsed = now - (self.t0 if self.began is None else self.began)
        return self.done / elapsed if elapsed > 0 else 0.0


class _LiveBar:
    """rich's Progress while any reporter is live: started by the first, stopped by the last."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress: Any = None
        self.users = 0

    def join(self, console: Any) -> Any:
        with self.lock:
            if self.progress is None:
                self.progress = _rich_progress(console)
                self.progress.start()
            self.users += 1
            return self.progress

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.progress.stop()
                self.progress = None


def _rich_progress(console: Any) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    # fits an 80-column terminal with the longest built-in name (ensemble_nn)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        TextColumn("{task.completed}/{task.total} fits"),
        TextColumn("{task.fields[rate]:.1f} fits/s"),
        TextColumn("{task.fields[failed]} failed"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console if console is not None else Console(stderr=True),
        redirect_stderr=True,
        redirect_stdout=True,
    )


_live_bar = _LiveBar()
