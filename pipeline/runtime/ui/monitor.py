"""`python -m pipeline monitor [--watch] [--rows]`: the state of a run, read from its progress
store.

Reads `{output_dir}/progress/progress.sqlite` read-only (WAL mode: never blocks the train
driver, always sees its last commit). Shows per model the counts by status in fits, as train
counts them (one fit = model, country, horizon, origin, every quantile at once; a panel
model's fit pools every country), or with `--rows` in forecast rows (model, country, quantile,
horizon, origin); percent done, throughput and ETA of the current run, the last failures, and
the dashboard link while a run is live. Fits count as training only while their run is alive
(a killed run's fits are pending), so "training" never exceeds the fits in flight. With no
store it says so and exits non-zero; `--watch` waits for the run's first progress instead.
`--watch` into a pipe or a file (`| cat`, `> log`) appends each refresh as plain text under a
time stamp, flushed, instead of redrawing the terminal.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from pipeline.runtime.store.progress import STATUSES, db_path, pid_alive
from pipeline.runtime.store.progress_format import DONE, PENDING, TRAINING, OldFormat
from pipeline.runtime.store.progress_groups import load_groups
from pipeline.runtime.store.progress_view import connect_ro, fit_counts

EXIT_NO_RUN = 1
EXIT_UNREADABLE = 2


@dataclass(frozen=True)
class ModelState:
    model: str
    counts: dict[str, int]
    rate: float | None  # fits (rows with --rows) done per second in the latest run
    eta_seconds: float | None
    run_state: str | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def percent_done(self) -> float:
        return 100.0 * self.counts.get("done", 0) / self.total if self.total else 0.0


@dataclass(frozen=True)
class Snapshot:
    output_dir: Path
    models: list[ModelState]
    failures: list[dict[str, object]] = field(default_factory=list)
    dashboard: str | None = None  # set only while a run is live
    live_model: str | None = None
    unit: str = "fits"  # or "rows": (model, country, quantile, horizon, origin)


def read_snapshot(
    output_dir: Path, now: float | None = None, last_failures: int = 5, rows: bool = False
) -> Snapshot | None:
    """The run's state, or None when the directory has no progress store. Counts are fits
    (forecast rows with `rows`)."""
    path = db_path(output_dir)
    if not path.exists():
        return None
    now = time.time() if now is None else now
    connection = connect_ro(path, timeout=5)
    try:
        connection.execute("BEGIN")  # one consistent state while the driver writes
        (tables,) = connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        if not tables:  # the driver is creating it
            return Snapshot(Path(output_dir), [], unit="rows" if rows else "fits")
        states = load_groups(connection, values=False)
        runs = {
            row[0]: row[1:]
            for row in connection.execute(
                "SELECT model, run_id, started, finished, state, dashboard, pid FROM runs "
                "WHERE rowid IN (SELECT MAX(rowid) FROM runs GROUP BY model)"
            )
        }
        first_task = dict(
            connection.execute(
                "SELECT t.model, MIN(t.id) FROM tasks t JOIN runs r ON r.model = t.model "
                "WHERE r.rowid IN (SELECT MAX(rowid) FROM runs GROUP BY model) "
                "AND t.started >= r.started GROUP BY t.model"
            ).fetchall()
        )
        failures = [
            dict(
                zip(
                    ("model", "country", "horizon", "origin", "error_type", "message", "attempt"),
                    row,
                    strict=True,
                )
            )
            for row in connection.execute(
                "SELECT model, country, horizon, origin, error_type, message, attempt FROM errors "
                "ORDER BY id DESC LIMIT ?",
                (last_failures,),
            )
        ]
        connection.execute("COMMIT")
    finally:
        connection.close()
    models = []
    dashboard = live_model = None
    for model in sorted({s.model for s in states}):
        mine = [s for s in states if s.model == model]
        run_id, started, finished, state, link, pid = runs.get(model, (None,) * 6)
        if state == "running" and not pid_alive(pid):
            state = "killed"  # the driver died without recording it
        if state != "running":  # no fit is in flight: those marked training wait again
            for s in mine:
                s.status[s.status == TRAINING] = PENDING
        counts = fit_counts(mine, rows=rows)[model]
        done_now = 0  # trained (not loaded) by the latest run's tasks
        for s in mine:
            if run_id not in s.runs or model not in first_task:
                continue
            now_done = (s.status == DONE) & (s.run == s.runs.index(run_id))
            now_done &= s.task >= first_task[model]
            weight = s.rows.sum(1) * len(s.horizons) * len(s.quantiles) if rows else 1
            done_now += int((now_done * weight).sum())
        rate = eta = None
        elapsed = (finished or now) - started if started else 0.0
        if done_now and elapsed > 0:
            rate = done_now / elapsed
            remaining = counts.get("pending", 0) + counts.get("training", 0)
            eta = remaining / rate if state == "running" else None
        if state == "running":
            dashboard, live_model = link, model
        models.append(ModelState(model, counts, rate, eta, state))
    unit = "rows" if rows else "fits"
    return Snapshot(Path(output_dir), models, failures, dashboard, live_model, unit)


def render(snapshot: Snapshot) -> Group:
    what = (
        "forecast rows (model, country, quantile, horizon, origin)"
        if snapshot.unit == "rows"
        else "fits (model, country, horizon, origin: every quantile at once)"
    )
    table = Table(title=f"run in {snapshot.output_dir}: {what}", title_justify="left")
    for column in ("model", *STATUSES, "done%", f"{snapshot.unit}/s", "ETA", "run"):
        justify = "left" if column in ("model", "run") else "right"
        table.add_column(column, justify=justify, no_wrap=True, min_width=len(column))
    for state in snapshot.models:
        table.add_row(
            state.model,
            *(str(state.counts.get(status, 0)) for status in STATUSES),
            f"{state.percent_done:.1f}",
            f"{state.rate:.1f}" if state.rate else "-",
            _duration(state.eta_seconds) if state.eta_seconds is not None else "-",
            state.run_state or "-",
        )
    parts: list[object] = [table]
    if not snapshot.models:
        parts.append(Text("waiting for the run's first fits"))
    if snapshot.dashboard:
        parts.append(Text(f"dashboard ({snapshot.live_model} is training): {snapshot.dashboard}"))
    if snapshot.failures:
        failed = Table(title="last failures", title_justify="left")
        for column in ("model", "country", "horizon", "origin", "error", "attempt"):
            failed.add_column(column)
        for row in snapshot.failures:
            message = f"{row['error_type']}: {str(row['message'])[:100]}"
            failed.add_row(
                str(row["model"]),
                str(row["country"]),
                str(row["horizon"]),
                str(row["origin"]),
                message,
                str(row["attempt"]),
            )
        parts.append(failed)
    return Group(*parts)


def monitor(
    output_dir: Path,
    watch: bool = False,
    interval: float = 2.0,
    console: Console | None = None,
    rows: bool = False,
) -> int:
    """Print the run's state once, or refresh it live with --watch until Ctrl-C (waiting for
    the run's first progress write when there is none yet)."""
    console = console or Console()
    try:
        snapshot = read_snapshot(output_dir, rows=rows)
    except sqlite3.DatabaseError as error:
        console.print(_unreadable(output_dir, error))
        return EXIT_UNREADABLE
    if snapshot is None and not watch:
        console.print(
            f"no run found in {output_dir}: there is no {db_path(output_dir)}. "
            "Start one with `python -m pipeline run` (or `dvc repro`), pass --output-dir of a "
            "run, or add --watch to wait for one."
        )
        return EXIT_NO_RUN
    if not watch:
        console.print(render(snapshot))  # type: ignore[arg-type]
        return 0
    if snapshot is None:  # said once (each refresh shows only the latest state)
        console.print(
            f"waiting for a run in {output_dir}: no {db_path(output_dir)} yet (Ctrl-C to stop)"
        )
        console.file.flush()
    # Ctrl-C sets a flag the loop waits on, instead of raising KeyboardInterrupt wherever the
    # main thread happens to be (inside rich's refresh lock it could hang the exit)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()  # handlers: main thread only
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if main else None
    try:
        if not (console.is_terminal or console.is_jupyter):  # a pipe or a file: Live prints nothing
            show = _plain_printer(console)
            show(snapshot)
            return _follow(output_dir, rows, interval, snapshot, stop, console, show)
        from rich.live import Live

        with Live(_view(snapshot), console=console, refresh_per_second=4) as live:  # type: ignore[arg-type]
            return _follow(
                output_dir, rows, interval, snapshot, stop, console, lambda s: live.update(_view(s))
            )
    except KeyboardInterrupt:  # not the main thread: the default handler still applies
        return 0
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _follow(
    output_dir: Path,
    rows: bool,
    interval: float,
    snapshot: Snapshot | None,
    stop: threading.Event,
    console: Console,
    show: Callable[[Snapshot | None], object],
) -> int:
    """Read the store every `interval` seconds and `show` its latest state until `stop`."""
    while not stop.wait(interval):
        try:
            snapshot = read_snapshot(output_dir, rows=rows) or snapshot
        except sqlite3.DatabaseError as error:
            if snapshot is None:  # the store is being created: try again
                continue
            console.print(_unreadable(output_dir, error))
            return EXIT_UNREADABLE
        show(snapshot)
    return 0


def _view(snapshot: Snapshot | None) -> object:
    return Text("") if snapshot is None else render(snapshot)


def _plain_printer(console: Console) -> Callable[[Snapshot | None], object]:
    """Each refresh appended as plain text under a time stamp, flushed (no cursor control:
    what `| cat`, `| tee` or a log file can show)."""

    def show(snapshot: Snapshot | None) -> None:
        if snapshot is None:
            return
        console.print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} ---")
        console.print(render(snapshot))
        console.file.flush()

    return show


def _unreadable(output_dir: Path, error: Exception) -> str:
    if isinstance(error, OldFormat):
        return (
            f"the progress store {db_path(output_dir)} was written by an earlier qpipe "
            f"({error}). It is derived data: the next `python -m pipeline run` (or `dvc "
            "repro`) on this output dir moves it to progress/old/ and rebuilds it from the fit "
            "cache; no fit is lost."
        )
    return (
        f"the progress store {db_path(output_dir)} is unreadable ({error}). It is derived data: "
        "the next `python -m pipeline run` (or `dvc repro`) on this output dir moves it to "
        "progress/damaged/ and rebuilds it from the fit cache; no fit is lost."
    )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
