"""Views of the progress store derived on read: counts, the per (model, country, quantile,
horizon, origin) table (read_table(path, "progress") and the parquet export, built in sorted
chunks so that a million fits never sit in memory as Python rows), failed keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io import atomic_path
from pipeline.runtime.fits.fit_groups import expand_rows
from pipeline.runtime.store.progress_format import (
    FAILED,
    STATUSES,
    GroupState,
    hex_keys,
    load_groups,
)

# the export's columns (the seed's one row per forecast), in order, and their types
ROW_COLUMNS = (
    "model", "country", "quantile", "horizon", "origin", "key", "status", "attempts",
    "error_type", "error_message", "worker", "started", "finished", "seconds", "peak_mb",
    "forecast", "alpha", "run_id",
)  # fmt: skip
FLOAT_COLUMNS = ("quantile", "started", "finished", "seconds", "peak_mb", "forecast", "alpha")
INT_COLUMNS = ("horizon", "attempts")
CHUNK_ROWS = 1 << 18


# --- views --------------------------------------------------------------------------------------


def fit_counts(states: Sequence[GroupState], rows: bool = False) -> dict[str, dict[str, int]]:
    """model -> status -> number of fits (or, `rows`, of forecast rows: fits x their
    countries x horizons x quantiles)."""
    out: dict[str, dict[str, int]] = {}
    for s in states:
        weight = s.rows.sum(1) * len(s.horizons) * len(s.quantiles) if rows else None
        n = np.bincount(s.status, weights=weight, minlength=len(STATUSES))
        counts = out.setdefault(s.model, dict.fromkeys(STATUSES, 0))
        for code, name in enumerate(STATUSES):
            counts[name] += int(n[code])
    return out


def rows_frame(
    states: Sequence[GroupState], tasks: pd.DataFrame, errors: pd.DataFrame
) -> pd.DataFrame:
    """The per (model, country, quantile, horizon, origin) table (ROW_COLUMNS), sorted by
    model, country, horizon, quantile, origin. `tasks`/`errors`: those tables, indexed by id."""
    return pd.concat(list(row_chunks(states, tasks, errors)), ignore_index=True)


def row_chunks(
    states: Sequence[GroupState],
    tasks: pd.DataFrame,
    errors: pd.DataFrame,
    chunk: int = CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """rows_frame in consecutive pieces of at most `chunk` rows: the sort runs on integer
    arrays, and only one piece's strings exist at a time."""
    states = [s for s in states if len(s)]
    if not states:
        yield _empty()
        return
    models = sorted({s.model for s in states})
    names = np.array(sorted({str(n) for s in states for n in s.names}), dtype=object)
    index, sort = [], []
    for gi, s in enumerate(states):
        fi, cj, hi, qi = _expand(s)
        rank = np.searchsorted(names, s.names.astype(str).astype(object))
        index.append((np.full(fi.size, gi, np.int32), np.arange(fi.size, dtype=np.int64)))
        sort.append(
            (
                s.origin[fi],
                np.asarray(s.quantiles)[qi],
                np.asarray(s.horizons)[hi],
                rank[s.country[fi, cj]],
                np.full(fi.size, models.index(s.model)),
            )
        )
    order = np.lexsort([np.concatenate(k) for k in zip(*sort, strict=True)])
    del sort
    group = np.concatenate([g for g, _ in index])[order]
    row = np.concatenate([i for _, i in index])[order]
    del index, order
    for start in range(0, group.size, chunk):
        g, r = group[start : start + chunk], row[start : start + chunk]
        frames, where = [], []
        for gi in np.unique(g).tolist():
            sel = np.nonzero(g == gi)[0]
            frames.append(_rows(states[gi], r[sel], tasks, errors))
            where.append(sel)
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        yield frame.iloc[np.argsort(np.concatenate(where))].reset_index(drop=True)


def write_rows(path: Path, chunks: Iterator[pd.DataFrame]) -> None:
    """The per-row table as parquet (atomic), one row group per chunk: the export."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        **dict.fromkeys(FLOAT_COLUMNS, pa.float64()),
        **dict.fromkeys(INT_COLUMNS, pa.int64()),
    }
    schema = pa.schema([(c, types.get(c, pa.string())) for c in ROW_COLUMNS])
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for chunk in chunks:
            table = pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
            writer.write_table(table.replace_schema_metadata(None))


def _empty() -> pd.DataFrame:
    def dtype(c: str) -> str:
        return "float64" if c in FLOAT_COLUMNS else "int64" if c in INT_COLUMNS else "object"

    return pd.DataFrame({c: pd.Series(dtype=dtype(c)) for c in ROW_COLUMNS})


def _expand(s: GroupState) -> tuple[np.ndarray, ...]:
    """(fit, row, horizon index, quantile index) of every forecast row of the group, fit-major."""
    F, _, H, Q = s.shape()
    return expand_rows(s.rows, np.arange(F), H, Q)


def _rows(
    s: GroupState, rows: np.ndarray, tasks: pd.DataFrame, errors: pd.DataFrame
) -> pd.DataFrame:
    """The rows `rows` (positions in _expand's order) of one group."""
    from pipeline.runtime.fits.fit_groups import origin_labels

    _, _, H, Q = s.shape()
    # _expand's order: row r is forecast (r // (H Q)) of the group's existing (fit, row) pairs
    fr, cr = np.nonzero(s.rows)
    pair, hq = np.divmod(rows, H * Q)
    fi, cj = fr[pair], cr[pair]
    hi, qi = np.divmod(hq, Q)
    fits, inverse = np.unique(fi, return_inverse=True)
    task = _lookup(tasks, s.task[fi], ("worker", "started", "finished", "seconds", "peak_mb"))
    error = _lookup(errors, s.error[fi], ("error_type", "message"))
    if s.forecast is not None:
        forecast = s.forecast[fi, cj, hi, qi]
        alpha = s.alpha[fi, qi]  # type: ignore[index]
    else:
        forecast = alpha = np.full(fi.size, np.nan)
    runs = np.array([*s.runs, None], dtype=object)
    return pd.DataFrame(
        {
            "model": np.full(fi.size, s.model, dtype=object),
            "country": s.names[s.country[fi, cj]],
            "quantile": np.asarray(s.quantiles, dtype=np.float64)[qi],
            "horizon": np.asarray(s.horizons, dtype=np.int64)[hi],
            "origin": origin_labels(s.origin[fi]),
            "key": hex_keys(s.keys[fits])[inverse],
            "status": np.array(STATUSES, dtype=object)[s.status[fi]],
            "attempts": s.attempts[fi].astype(np.int64),
            "error_type": error["error_type"],
            "error_message": error["message"],
            **task,
            "forecast": forecast.astype(np.float64),
            "alpha": alpha.astype(np.float64),
            "run_id": runs[s.run[fi]],
        }
    )


def _lookup(table: pd.DataFrame, ids: np.ndarray, columns: Sequence[str]) -> dict[str, Any]:
    """Columns of `table` (indexed by id) at `ids` (0: none -> None/NaN)."""
    known = table.reindex(np.unique(ids[ids > 0]))
    pos = np.searchsorted(known.index.to_numpy(), ids)
    hit = ids > 0
    out: dict[str, Any] = {}
    for c in columns:
        col = known[c].to_numpy() if c in known else np.array([])
        if col.dtype.kind == "f":
            values = np.full(ids.size, np.nan)
        else:
            values = np.full(ids.size, None, dtype=object)
        if hit.any():
            values[hit] = col[pos[hit]]
        out[c] = values
    return out


def side_tables(conn: sqlite3.Connection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tasks, errors) indexed by id, the columns rows_frame reads."""
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


def failed_keys(path: str | Path) -> set[str]:
    """Content keys of the fits whose last attempt failed."""
    conn = connect_ro(path)
    try:
        states = load_groups(conn, values=False)
    finally:
        conn.close()
    return {k for s in states for k in hex_keys(s.keys[s.status == FAILED])}
