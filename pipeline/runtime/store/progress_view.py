"""Views of the progress store derived on read: counts, the side tables, the per (model,
country, quantile, horizon, origin) table (`read_table(path, "progress")`, built by
progress_rows.py), the failed fits' rows and keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.runtime.fits.keys import hex_keys
from pipeline.runtime.store.progress_format import FAILED, STATUSES, GroupState
from pipeline.runtime.store.progress_groups import load_groups
from pipeline.runtime.store.progress_rows import rows_frame

if TYPE_CHECKING:  # imported where a frame is made: counts (monitor, a no-op run) need none
    import pandas as pd


def fit_counts(states: Sequence[GroupState], rows: bool = False) -> dict[str, dict[str, int]]:
    """model -> status -> number of fits (or, `rows`, of forecast rows: fits x their
    countries x horizons x quantiles)."""
    return tally(
        (s.model, s.status, s.rows.sum(1) * len(s.horizons) * len(s.quantiles) if rows else None)
        for s in states
    )


def tally(
    statuses: Iterable[tuple[str, np.ndarray, np.ndarray | None]],
) -> dict[str, dict[str, int]]:
    """model -> status -> count, from (model, status per fit, weight per fit or None)."""
    out: dict[str, dict[str, int]] = {}
    for model, status, weight in statuses:
        n = np.bincount(status, weights=weight, minlength=len(STATUSES))
        counts = out.setdefault(model, dict.fromkeys(STATUSES, 0))
        for code, name in enumerate(STATUSES):
            counts[name] += int(n[code])
    return out


def side_tables(conn: sqlite3.Connection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tasks, errors) indexed by id, the columns rows_frame reads."""
    import pandas as pd

    tasks = pd.read_sql_query(
        "SELECT id, worker, started, finished, seconds, peak_mb FROM tasks", conn, index_col="id"
    )
    errors = pd.read_sql_query("SELECT id, error_type, message FROM errors", conn, index_col="id")
    return tasks, errors


def connect_ro(path: str | Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A read-only connection that never takes a lock a writer would wait on (WAL)."""
    return sqlite3.connect(
        f"file:{Path(path)}?mode=ro", uri=True, timeout=timeout, isolation_level=None
    )


def read_table(path: str | Path, table: str) -> pd.DataFrame:
    """One table of the store; "progress" is the per-row view derived from the groups."""
    import pandas as pd

    names = ("progress", "errors", "runs", "tasks")
    if table not in names:
        raise ValueError(f"table must be one of {list(names)}; got {table!r}")
    conn = connect_ro(path)
    try:
        if table != "progress":
            return pd.read_sql_query(f"SELECT * FROM {table}", conn)
        conn.execute("BEGIN")
        states = load_groups(conn)
        tasks, errors = side_tables(conn)
        conn.execute("COMMIT")
        return rows_frame(states, tasks, errors)
    finally:
        conn.close()


def failed_rows(path: str | Path) -> pd.DataFrame:
    """The per-row view (ROW_COLUMNS) of the fits whose last attempt failed only: what
    assemble labels `failed` among the missing forecasts (usually none, so a few rows)."""
    from dataclasses import replace

    conn = connect_ro(path)
    try:
        conn.execute("BEGIN")
        states = load_groups(conn, values=False)
        tasks, errors = side_tables(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    per_fit = ("keys", "country", "rows", "origin", "status", "attempts", "task", "run", "error")
    only = []
    for s in states:
        i = np.nonzero(s.status == FAILED)[0]
        only.append(replace(s, **{n: getattr(s, n)[i] for n in per_fit}))
    return rows_frame(only, tasks, errors)


def failed_keys(path: str | Path) -> set[str]:
    """Content keys of the fits whose last attempt failed."""
    conn = connect_ro(path)
    try:
        states = load_groups(conn, values=False)
    finally:
        conn.close()
    return {k for s in states for k in hex_keys(s.keys[s.status == FAILED])}
