"""The progress store: SQLite in WAL mode, one writer (the train driver), any number of readers.

File: `{output_dir}/progress/progress.sqlite`; exported at the end of train (and on an
interrupt) to `progress/progress.parquet` and `progress/errors.parquet`.

Schema (for readers such as the monitor; open read-only with
`sqlite3.connect(f"file:{path}?mode=ro", uri=True)`: in WAL mode a reader never blocks the
writer and always sees the last committed state):

table `progress`, one row per (model, country, quantile, horizon, origin), primary key those five
  model TEXT, country TEXT, quantile REAL, horizon INTEGER, origin TEXT ('YYYY-MM-DD', = WINDOW_END)
  key TEXT            content key of the fit (shared by a fit's quantiles; a panel fit's countries)
  status TEXT         'pending' | 'training' | 'done' | 'failed'
  attempts INTEGER    tries so far, over all runs
  error_type TEXT     exception class name, 'memory' (worker killed / MemoryError) or NULL
  error_message TEXT  last error's message or NULL
  worker TEXT         host:pid of the worker that ran the last attempt
  started REAL, finished REAL   unix seconds of the last attempt's task
  seconds REAL        the fit's share of its task's time (task seconds / fits in the task)
  peak_mb REAL        peak RSS of the worker process when the task finished
  forecast REAL       the forecast (quantile of y at origin + horizon) once done
  alpha REAL          chosen penalty (lqr) or NULL
  run_id TEXT         run that last touched the row
table `errors`: id INTEGER PK, run_id, model, key, country, horizon, origin, attempt,
  error_type, message, traceback (full text), at (unix seconds)
table `runs`: run_id TEXT PK, model, pid, started, finished, state ('running' | 'finished' |
  'interrupted' | 'failed' | 'killed': found dead by a later run), dashboard (URL or NULL), n_workers, log_path, fits, trained,
  loaded, failed
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io import write_parquet

log = logging.getLogger("pipeline.train")
PROGRESS_DIR = Path("progress")
DB_NAME = "progress.sqlite"
STATUSES = ("pending", "training", "done", "failed")
ROW_KEY = ("model", "country", "quantile", "horizon", "origin")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    model TEXT NOT NULL, country TEXT NOT NULL, quantile REAL NOT NULL,
    horizon INTEGER NOT NULL, origin TEXT NOT NULL,
    key TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    error_type TEXT, error_message TEXT, worker TEXT, started REAL, finished REAL,
    seconds REAL, peak_mb REAL, forecast REAL, alpha REAL, run_id TEXT,
    PRIMARY KEY (model, country, quantile, horizon, origin)
);
CREATE INDEX IF NOT EXISTS progress_key ON progress (key);
CREATE INDEX IF NOT EXISTS progress_status ON progress (model, status);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, model TEXT, key TEXT, country TEXT,
    horizon INTEGER, origin TEXT, attempt INTEGER, error_type TEXT, message TEXT,
    traceback TEXT, at REAL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, model TEXT, pid INTEGER, started REAL, finished REAL,
    state TEXT, dashboard TEXT, n_workers INTEGER, log_path TEXT,
    fits INTEGER, trained INTEGER, loaded INTEGER, failed INTEGER
);
"""


def db_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / PROGRESS_DIR / DB_NAME


class ProgressStore:
    """The single writer of the progress database (the train driver owns one instance)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rebuilt_from: Path | None = None  # where an unreadable store was moved
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise  # a full disk, not a damaged store: the CLI's disk-full message
            # the store is derived data (the fit cache holds every result): start a new one
            self.rebuilt_from = self._quarantine()
            log.warning(
                "progress store %s is unreadable (%s): moved to %s; rebuilding it from the fit "
                "cache (earlier runs' history and tracebacks stay in the moved file)",
                self.path,
                error,
                self.rebuilt_from,
            )
            self._open()

    def _open(self) -> None:
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a process crash (not power loss)
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            (check,) = self.conn.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
        except sqlite3.DatabaseError:
            self.conn.close()
            raise

    def _quarantine(self) -> Path:
        target = self.path.parent / "damaged" / f"{self.path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, target.with_name(target.name + suffix))
        return target

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ProgressStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
                "INSERT OR REPLACE INTO runs (run_id, model, pid, started, state, log_path) VALUES (?,?,?,?,?,?)",
                (run_id, model, pid, time.time(), "running", log_path),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute(
                f"UPDATE runs SET {cols} WHERE run_id = ?", (*fields.values(), run_id)
            )

    # --- fits -----------------------------------------------------------------------------

    def sync_rows(
        self, model: str, rows: Sequence[tuple[str, float, int, str, str]], run_id: str
    ) -> None:
        """Make the model's rows exactly `rows` = [(country, quantile, horizon, origin, key)].

        A row whose key changed (new parameters or data) goes back to pending with zero
        attempts; rows of fits no longer in the study are deleted.
        """
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS want (country TEXT, quantile REAL, horizon INTEGER, "
                "origin TEXT, key TEXT, PRIMARY KEY (country, quantile, horizon, origin))"
            )
            self.conn.execute("DELETE FROM want")
            self.conn.executemany("INSERT INTO want VALUES (?,?,?,?,?)", rows)
            self.conn.execute(
                "DELETE FROM progress WHERE model = ? AND NOT EXISTS (SELECT 1 FROM want w WHERE "
                "w.country = progress.country AND w.quantile = progress.quantile AND "
                "w.horizon = progress.horizon AND w.origin = progress.origin)",
                (model,),
            )
            self.conn.execute(
                "INSERT INTO progress (model, country, quantile, horizon, origin, key, status, attempts, run_id) "
                "SELECT ?, country, quantile, horizon, origin, key, 'pending', 0, ? FROM want WHERE true "
                "ON CONFLICT (model, country, quantile, horizon, origin) DO UPDATE SET "
                "key = excluded.key, status = 'pending', attempts = 0, error_type = NULL, "
                "error_message = NULL, forecast = NULL, alpha = NULL, run_id = excluded.run_id "
                "WHERE progress.key != excluded.key",
                (model, run_id),
            )
            self.conn.execute("DELETE FROM want")

    def done_forecasts(
        self, model: str
    ) -> dict[str, list[tuple[str, int, float, float, float | None]]]:
        """key -> [(country, horizon, quantile, forecast, alpha)] of rows recorded done."""
        out: dict[str, list[tuple[str, int, float, float, float | None]]] = {}
        cur = self.conn.execute(
            "SELECT key, country, horizon, quantile, forecast, alpha FROM progress WHERE model = ? AND status = 'done'",
            (model,),
        )
        for key, country, h, q, f, a in cur:
            out.setdefault(key, []).append((country, h, q, f, a))
        return out

    def done_counts(self, model: str) -> dict[str, int]:
        """key -> number of its rows recorded done."""
        cur = self.conn.execute(
            "SELECT key, COUNT(*) FROM progress WHERE model = ? AND status = 'done' GROUP BY key",
            (model,),
        )
        return dict(cur.fetchall())

    def attempts(self, model: str) -> dict[str, int]:
        """key -> attempts so far."""
        cur = self.conn.execute(
            "SELECT key, MAX(attempts) FROM progress WHERE model = ? GROUP BY key", (model,)
        )
        return dict(cur.fetchall())

    def set_status(
        self, model: str, keys: Iterable[str], status: str, run_id: str, **fields: Any
    ) -> None:
        """Set status (and optional columns) on every row of the given fits."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}; got {status!r}")
        cols = ", ".join(["status = ?", "run_id = ?", *(f"{k} = ?" for k in fields)])
        params = [(status, run_id, *fields.values(), model, k) for k in keys]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(f"UPDATE progress SET {cols} WHERE model = ? AND key = ?", params)

    # The done updates name the key index: left alone, SQLite's planner takes the primary
    # key's (model, country, quantile, horizon) prefix and walks every origin of that series
    # for each row (O(origins) per row; 2.5x slower at 228 origins).
    def record_done(
        self,
        model: str,
        run_id: str,
        rows: Sequence[tuple[str, str, int, float, float, float | None]],
        task: dict[str, Any],
        n_fits: int,
    ) -> None:
        """Mark fits done: rows = [(key, country, horizon, quantile, forecast, alpha)] from one task."""
        per_fit = task["seconds"] / max(n_fits, 1)
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "UPDATE progress INDEXED BY progress_key SET status = 'done', attempts = attempts + 1, error_type = NULL, "
                "error_message = NULL, worker = ?, started = ?, finished = ?, seconds = ?, peak_mb = ?, "
                "forecast = ?, alpha = ?, run_id = ? "
                "WHERE model = ? AND key = ? AND country = ? AND horizon = ? AND quantile = ?",
                [
                    (
                        task["worker"],
                        task["started"],
                        task["finished"],
                        per_fit,
                        task["peak_mb"],
                        f,
                        a,
                        run_id,
                        model,
                        k,
                        c,
                        h,
                        q,
                    )
                    for k, c, h, q, f, a in rows
                ],
            )

    def mark_loaded(
        self,
        model: str,
        run_id: str,
        rows: Sequence[tuple[str, str, int, float, float, float | None]],
    ) -> None:
        """Mark fits found in the model cache done (attempts unchanged); rows as in record_done."""
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "UPDATE progress INDEXED BY progress_key SET status = 'done', error_type = NULL, error_message = NULL, "
                "forecast = ?, alpha = ?, run_id = ? "
                "WHERE model = ? AND key = ? AND country = ? AND horizon = ? AND quantile = ?",
                [(f, a, run_id, model, k, c, h, q) for k, c, h, q, f, a in rows],
            )

    def record_failed(
        self,
        model: str,
        run_id: str,
        failures: Sequence[dict[str, Any]],
        task: dict[str, Any] | None = None,
    ) -> None:
        """Mark fits failed and append their tracebacks: failures = [{key, error_type, message, traceback}]."""
        now = time.time()
        task = task or {}
        with self.conn:
            self.conn.execute("BEGIN")
            for f in failures:
                self.conn.execute(
                    "UPDATE progress SET status = 'failed', attempts = attempts + 1, error_type = ?, "
                    "error_message = ?, worker = ?, started = ?, finished = ?, peak_mb = ?, run_id = ? "
                    "WHERE model = ? AND key = ?",
                    (
                        f["error_type"],
                        f["message"],
                        task.get("worker"),
                        task.get("started"),
                        task.get("finished", now),
                        task.get("peak_mb"),
                        run_id,
                        model,
                        f["key"],
                    ),
                )
                self.conn.execute(
                    "INSERT INTO errors (run_id, model, key, country, horizon, origin, attempt, error_type, message, traceback, at) "
                    "SELECT ?, model, key, country, horizon, origin, attempts, ?, ?, ?, ? FROM progress "
                    "WHERE model = ? AND key = ? ORDER BY country, quantile LIMIT 1",
                    (run_id, f["error_type"], f["message"], f["traceback"], now, model, f["key"]),
                )

    def reset_training(self, model: str, run_id: str) -> None:
        """Rows left 'training' (a run that was stopped) go back to 'pending'."""
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute(
                "UPDATE progress SET status = 'pending', run_id = ? WHERE model = ? AND status = 'training'",
                (run_id, model),
            )

    # --- reading and export ---------------------------------------------------------------

    def counts(self, model: str | None = None) -> dict[str, dict[str, int]]:
        """model -> status -> number of rows."""
        sql = "SELECT model, status, COUNT(*) FROM progress"
        args: tuple[Any, ...] = ()
        if model is not None:
            sql, args = sql + " WHERE model = ?", (model,)
        out: dict[str, dict[str, int]] = {}
        for m, s, n in self.conn.execute(sql + " GROUP BY model, status", args):
            out.setdefault(m, {})[s] = n
        return out

    def export(self, output_dir: str | Path) -> None:
        """Write progress/progress.parquet and progress/errors.parquet (deterministic order)."""
        out = Path(output_dir) / PROGRESS_DIR
        progress = pd.read_sql_query(
            "SELECT * FROM progress ORDER BY model, country, horizon, quantile, origin", self.conn
        )
        errors = pd.read_sql_query("SELECT * FROM errors ORDER BY id", self.conn)
        write_parquet(out / "progress.parquet", progress)
        write_parquet(out / "errors.parquet", errors)


def read_table(path: str | Path, table: str) -> pd.DataFrame:
    """Read one table without taking any lock a writer would wait on (read-only URI)."""
    if table not in ("progress", "errors", "runs"):
        raise ValueError(f"table must be one of ['progress', 'errors', 'runs']; got {table!r}")
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=30.0)
    try:
        return pd.read_sql_query(f"SELECT * FROM {table}", conn)
    finally:
        conn.close()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
