"""`python -m pipeline monitor [--watch]`: the state of a run, read from its progress store.

Reads `{output_dir}/progress/progress.sqlite` read-only (WAL mode: never blocks the train
driver, always sees its last commit). Shows per model the counts by status, percent done,
throughput and ETA of the current run, the last failures, and the dashboard link while a run
is live. With no store it says so and exits non-zero.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from pipeline.runtime.store.progress import STATUSES, db_path, pid_alive

EXIT_NO_RUN = 1
EXIT_UNREADABLE = 2


@dataclass(frozen=True)
class ModelState:
    model: str
    counts: dict[str, int]
    rate: float | None  # progress rows done per second in the latest run
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


def read_snapshot(
    output_dir: Path, now: float | None = None, last_failures: int = 5
) -> Snapshot | None:
    """The run's state, or None when the directory has no progress store."""
    path = db_path(output_dir)
    if not path.exists():
        return None
    now = time.time() if now is None else now
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        counts: dict[str, dict[str, int]] = {}
        for model, status, n in connection.execute(
            "SELECT model, status, COUNT(*) FROM progress GROUP BY model, status"
        ):
            counts.setdefault(model, dict.fromkeys(STATUSES, 0))[status] = n
        runs = {
            row[0]: row[1:]
            for row in connection.execute(
                "SELECT model, run_id, started, finished, state, dashboard, pid FROM runs "
                "WHERE rowid IN (SELECT MAX(rowid) FROM runs GROUP BY model)"
            )
        }
        models = []
        dashboard = live_model = None
        for model in sorted(counts):
            rate = eta = None
            state = None
            if model in runs:
                run_id, started, finished, state, link, pid = runs[model]
                if state == "running" and not pid_alive(pid):
                    state = "killed"  # the driver died without recording it
                (done_now,) = connection.execute(
                    "SELECT COUNT(*) FROM progress WHERE model = ? AND run_id = ? AND status = 'done' AND finished IS NOT NULL",
                    (model, run_id),
                ).fetchone()
                elapsed = (finished or now) - started if started else 0.0
                if done_now and elapsed > 0:
                    rate = done_now / elapsed
                    remaining = counts[model].get("pending", 0) + counts[model].get("training", 0)
                    eta = remaining / rate if state == "running" else None
                if state == "running":
                    dashboard, live_model = link, model
            models.append(ModelState(model, counts[model], rate, eta, state))
        failures = [
            dict(
                zip(
                    ("model", "country", "horizon", "origin", "error_type", "message", "attempt"),
                    row,
                    strict=True,
                )
            )
            for row in connection.execute(
                "SELECT model, country, horizon, origin, error_type, message, attempt FROM errors ORDER BY id DESC LIMIT ?",
                (last_failures,),
            )
        ]
    finally:
        connection.close()
    return Snapshot(Path(output_dir), models, failures, dashboard, live_model)


def render(snapshot: Snapshot) -> Group:
    table = Table(title=f"run in {snapshot.output_dir}", title_justify="left")
    for column in ("model", *STATUSES, "done%", "rows/s", "ETA", "run"):
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
    output_dir: Path, watch: bool = False, interval: float = 2.0, console: Console | None = None
) -> int:
    """Print the run's state once, or refresh it live with --watch until Ctrl-C."""
    console = console or Console()
    try:
        snapshot = read_snapshot(output_dir)
    except sqlite3.DatabaseError as error:
        console.print(_unreadable(output_dir, error))
        return EXIT_UNREADABLE
    if snapshot is None:
        console.print(
            f"no run found in {output_dir}: there is no {db_path(output_dir)}. "
            "Start one with `python -m pipeline run` (or `dvc repro`), or pass --output-dir of a run."
        )
        return EXIT_NO_RUN
    if not watch:
        console.print(render(snapshot))
        return 0
    from rich.live import Live

    # Ctrl-C sets a flag the loop waits on, instead of raising KeyboardInterrupt wherever the
    # main thread happens to be (inside rich's refresh lock it could hang the exit)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()  # handlers: main thread only
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if main else None
    try:
        with Live(render(snapshot), console=console, refresh_per_second=4) as live:
            while not stop.wait(interval):
                try:
                    snapshot = read_snapshot(output_dir) or snapshot
                except sqlite3.DatabaseError as error:
                    console.print(_unreadable(output_dir, error))
                    return EXIT_UNREADABLE
                live.update(render(snapshot))
    except KeyboardInterrupt:  # not the main thread: the default handler still applies
        return 0
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return 0


def _unreadable(output_dir: Path, error: Exception) -> str:
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
