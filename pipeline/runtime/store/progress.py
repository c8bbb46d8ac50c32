"""The progress store's writer: SQLite in WAL mode, one writer (the train driver), any number
of readers.

File: `{output_dir}/progress/progress.sqlite`. Its format (the tables, and each fit group's
plan and state as arrays plus one event per task transition) is progress_format.py's (the
states in memory and their events: progress_groups.py), so the store grows by tens of bytes per
fit and the driver writes a few rows per task, not one per forecast. Readers open it read-only
(`progress_view.connect_ro`): in WAL mode a reader never blocks the writer and always sees the
last committed state. What is derived on read lives apart: the counts and tables
(progress_view.py: `read_table(path, "progress")` is the seed's one row per (model, country,
quantile, horizon, origin), built by progress_rows.py), and the files (progress_export.py:
`progress/errors.parquet`, which train writes at its end and on an interrupt;
`progress/progress.parquet` only on demand, `monitor --export`). Opening it (progress_open.py)
moves a store in another format (an earlier qpipe) or unreadable aside and makes a new one: it
is derived data, the fit cache holds every result.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.runtime.store.key_match import KeyMatcher
from pipeline.runtime.store.progress_export import write_errors, write_export
from pipeline.runtime.store.progress_format import (  # the format, one place
    DONE,
    PENDING,
    PROGRESS_DIR,
    STATUSES,
    TRAINING,
    GroupState,
    float_blob,
    group_row,
    pack_index,
    raw_blob,
)
from pipeline.runtime.store.progress_groups import (
    apply_fits,
    carry_state,
    fresh_state,
    load_groups,
    load_statuses,
    mirror_state,
)
from pipeline.runtime.store.progress_open import open_store
from pipeline.runtime.store.progress_view import read_table, tally

if TYPE_CHECKING:
    from pipeline.runtime.fits.fit_groups import FitGroup

__all__ = ["STATUSES", "ProgressStore", "db_path", "pid_alive", "read_table"]

DB_NAME = "progress.sqlite"


def db_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / PROGRESS_DIR / DB_NAME


class ProgressStore:
    """The single writer of the progress database (the train driver owns one instance).

    Fits are named by (group, positions in the group) of the groups given to `sync`; the
    store mirrors its fits' statuses and attempts in memory (5 bytes per fit)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._groups: dict[str, list[FitGroup]] = {}
        self._states: dict[str, list[GroupState]] = {}  # statuses/attempts only (no values)
        # rebuilt_from: where an unreadable or old store was moved (progress_open.py)
        self.conn, self.rebuilt_from = open_store(self.path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ProgressStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, *params: Any) -> int:
        with self.conn:
            self.conn.execute("BEGIN")
            return int(self.conn.execute(sql, params).lastrowid or 0)

    # --- runs -----------------------------------------------------------------------------

    def start_run(self, run_id: str, model: str, pid: int, log_path: str) -> None:
        """Record a new run; earlier runs still 'running' whose process is gone become 'killed'."""
        stale = [
            r
            for (r, p) in self.conn.execute("SELECT run_id, pid FROM runs WHERE state = 'running'")
            if not pid_alive(p)
        ]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "UPDATE runs SET state = 'killed' WHERE run_id = ?", [(r,) for r in stale]
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO runs (run_id, model, pid, started, state, log_path) "
                "VALUES (?,?,?,?,?,?)",
                (run_id, model, pid, time.time(), "running", log_path),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE runs SET {cols} WHERE run_id = ?", *fields.values(), run_id)

    # --- the plan -------------------------------------------------------------------------

    def sync(
        self, model: str, groups: Sequence[FitGroup], quantiles: Sequence[float], run_id: str
    ) -> None:
        """Make the model's fits exactly those of `groups`. A fit keeps its state when the store
        knows its key; a new key (new parameters or data) starts pending with zero attempts;
        fits no longer in the study are dropped. Fits left 'training' (a stopped run) go back
        to pending."""
        old = load_groups(self.conn, model)
        # the store's keys matched in bulk (their first 8 bytes searched as integers: at 1M
        # fits 5x less CPU than a search of 32-byte strings)
        known = KeyMatcher(np.concatenate([s.keys for s in old])) if old else None
        starts = np.cumsum([0, *(len(s) for s in old)])
        new: list[GroupState] = []
        for gi, g in enumerate(groups):
            state = fresh_state(model, gi, g, quantiles)
            if known is not None and len(g):
                hit, src = known(state.keys)
                for oi, s in enumerate(old):  # carry each known fit's state over
                    sel = (src >= starts[oi]) & (src < starts[oi + 1])
                    if sel.any():
                        carry_state(state, hit[sel], s, src[sel] - starts[oi], run_id)
            state.status[state.status == TRAINING] = PENDING
            state.run[state.run < 0] = state.run_index(run_id)
            new.append(state)
        self._write_groups(model, new)
        self._groups[model] = list(groups)
        self._states[model] = mirror_state(new)

    def compact(self, model: str) -> None:
        """Fold the model's events into its groups' snapshot (fits left 'training' by a stopped
        run go back to pending); the store then holds one row per group."""
        states = load_groups(self.conn, model)
        for s in states:
            s.status[s.status == TRAINING] = PENDING
        self._write_groups(model, states)
        if model in self._states:
            self._states[model] = mirror_state(states)

    def _write_groups(self, model: str, states: Sequence[GroupState]) -> None:
        used = sorted({int(t) for s in states for t in _task_ids(s.task)})
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute("DELETE FROM groups WHERE model = ?", (model,))
            self.conn.execute("DELETE FROM events WHERE model = ?", (model,))
            self.conn.execute(
                "DELETE FROM tasks WHERE model = ? AND id NOT IN (SELECT value FROM json_each(?))",
                (model, json.dumps(used)),
            )
            self.conn.executemany(
                "INSERT INTO groups VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [group_row(s) for s in states],
            )
        self.conn.execute("PRAGMA incremental_vacuum")

    # --- fits -----------------------------------------------------------------------------

    def done_mask(self, model: str) -> list[np.ndarray]:
        """Per group of the last `sync`: which fits the store records done."""
        return [s.status == DONE for s in self._states[model]]

    def start_task(self, model: str, grp: int, fits: np.ndarray, run_id: str) -> int:
        """Fits `fits` (positions in group `grp`) are submitted as one task: its tasks.id."""
        fits = np.asarray(fits, dtype=np.int64)
        with self.conn:
            self.conn.execute("BEGIN")
            task = self.conn.execute(
                "INSERT INTO tasks (model, started) VALUES (?, ?)", (model, time.time())
            ).lastrowid
            self._event(model, grp, "training", fits, run_id, task=task)
        return int(task or 0)

    def record_done(
        self,
        model: str,
        run_id: str,
        grp: int,
        fits: np.ndarray,
        pred: np.ndarray,
        alpha: np.ndarray,
        task: int,
        meta: dict[str, Any],
        n_fits: int,
    ) -> None:
        """Fits done by task `task`: pred (n, C, H, Q), alpha (n, Q); `meta` the worker's
        result (worker, started, finished, seconds, peak_mb), its time shared by `n_fits`."""
        with self.conn:
            self.conn.execute("BEGIN")
            self._task_meta(task, meta, meta["seconds"] / max(n_fits, 1))
            if len(fits):
                self._event(model, grp, "done", fits, run_id, task, 1, forecast=pred, alpha=alpha)

    def mark_loaded(
        self,
        model: str,
        run_id: str,
        grp: int,
        fits: np.ndarray,
        pred: np.ndarray,
        alpha: np.ndarray,
    ) -> None:
        """Fits found in the model cache are done (attempts and last task unchanged)."""
        with self.conn:
            self.conn.execute("BEGIN")
            self._event(model, grp, "done", fits, run_id, forecast=pred, alpha=alpha)

    def record_failed(
        self,
        model: str,
        run_id: str,
        grp: int,
        fits: np.ndarray,
        failures: Sequence[dict[str, Any]],
        task: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Fits `fits` failed in task `task`; failures[i] = {error_type, message, traceback} of
        fits[i], each appended to `errors` with its full traceback. `meta`: the task's result
        when only some of its fits failed (record_done recorded its times)."""
        from pipeline.runtime.fits.fit_rows import origin_labels

        fits = np.asarray(fits, dtype=np.int64)
        g, state, now = self._groups[model][grp], self._states[model][grp], time.time()
        labels = origin_labels(g.origin[fits]) if fits.size else []
        ids = []
        with self.conn:
            self.conn.execute("BEGIN")
            if task and meta is None:  # the whole task failed: no result tells its times
                self.conn.execute("UPDATE tasks SET finished = ? WHERE id = ?", (now, task))
            for j, (i, f) in enumerate(zip(fits.tolist(), failures, strict=True)):
                first = int(np.argmax(g.rows[i]))  # the fit's first forecast row
                where = (str(g.keys[i]), str(g.countries[i, first]), int(g.horizons[0]), labels[j])
                what = (f["error_type"], f["message"], f["traceback"], now)
                cursor = self.conn.execute(
                    "INSERT INTO errors (run_id, model, key, country, horizon, origin, attempt, "
                    "error_type, message, traceback, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, model, *where, int(state.attempts[i]) + 1, *what),
                )
                ids.append(cursor.lastrowid)
            error = np.asarray(ids, dtype="<i8")
            self._event(model, grp, "failed", fits, run_id, task, 1, error=error)

    def _task_meta(self, task: int, meta: dict[str, Any], per_fit: float | None) -> None:
        self.conn.execute(
            "UPDATE tasks SET worker = ?, started = COALESCE(?, started), finished = ?, "
            "seconds = ?, peak_mb = ? WHERE id = ?",
            (
                meta.get("worker"),
                meta.get("started"),
                meta.get("finished"),
                per_fit,
                meta.get("peak_mb"),
                task,
            ),
        )

    def _event(
        self,
        model: str,
        grp: int,
        status: str,
        fits: np.ndarray,
        run_id: str,
        task: int | None = None,
        bump: int = 0,
        error: np.ndarray | None = None,
        forecast: np.ndarray | None = None,
        alpha: np.ndarray | None = None,
    ) -> None:
        """One event row (inside the caller's transaction), mirrored in memory."""
        fits = np.asarray(fits, dtype=np.int64)
        row = (
            model,
            grp,
            status,
            pack_index(fits),
            run_id,
            task,
            bump,
            None if error is None else raw_blob(error, "<i8"),
            None if forecast is None else raw_blob(forecast, "<f8"),
            None if alpha is None else float_blob(alpha),
        )
        self.conn.execute(
            "INSERT INTO events (model, grp, status, fits, run_id, task, bump, error, forecast, "
            "alpha) VALUES (?,?,?,?,?,?,?,?,?,?)",
            row,
        )
        apply_fits(self._states[model][grp], status, fits, *row[4:])

    # --- reading and export ---------------------------------------------------------------

    def counts(self, model: str | None = None) -> dict[str, dict[str, int]]:
        """model -> status -> number of fits (the statuses alone read: a no-op run asks)."""
        return tally((name, status, None) for name, status in load_statuses(self.conn, model))

    def export_errors(self, output_dir: str | Path) -> None:
        """Write progress/errors.parquet (progress_export.write_errors): what train exports at
        its end; a progress/progress.parquet of this product, now stale, is removed."""
        write_errors(self.conn, output_dir)

    def export(self, output_dir: str | Path) -> None:
        """Write progress/progress.parquet (the per-row view) and progress/errors.parquet
        (progress_export.write_export): on demand, `monitor --export`."""
        write_export(self.conn, output_dir)


def _task_ids(task: np.ndarray) -> np.ndarray:
    """The distinct nonzero task ids of a group's fits (a task's fits are runs: the unique of
    the runs' values, not a sort of every fit's; none in a fresh group)."""
    task = task[task != 0]
    return np.unique(task[np.r_[True, task[1:] != task[:-1]]]) if task.size else task


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` (a run's recorded driver) still runs on this machine."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
