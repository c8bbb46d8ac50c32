"""The progress store's files: `progress/errors.parquet`, which train writes at its end (and on
an interrupt), and `progress/progress.parquet`, the per-row view, written only on demand
(`monitor --export`). Each is read from the store in one read transaction.

errors.parquet has one fixed schema (ERRORS_COLUMNS), whatever the failures held: a run with
no failure writes an empty table of the same columns and types, so readers can concatenate
the files of many runs. (Until issue 18 its column types followed what pandas' read of the
SQLite table gave: a column of NULLs, or every column of an empty file, was Arrow's null
type, and an integer column with a NULL was float64.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import write_parquet_tables
from pipeline.runtime.store.progress_format import PROGRESS_DIR
from pipeline.runtime.store.progress_groups import load_groups
from pipeline.runtime.store.progress_rows import row_chunks, write_rows
from pipeline.runtime.store.progress_view import side_tables

# progress/errors.parquet: one row per failed attempt of a fit, in the order they happened
# (`id`), every column nullable. The types are the Arrow types of pyarrow's namespace; strings
# are large_string (what pandas' str columns are in Arrow), times seconds since the epoch.
ERRORS_COLUMNS = (
    ("id", "int64"),  # the failure's number in the store (increasing)
    ("run_id", "large_string"),  # the train run of the attempt
    ("model", "large_string"),
    ("key", "large_string"),  # the fit's content key (hex)
    ("country", "large_string"),  # the fit's first country (a panel fit pools several)
    ("horizon", "int64"),  # the fit's first horizon
    ("origin", "large_string"),  # the forecast origin, YYYY-MM-DD (its first day)
    ("attempt", "int64"),  # 1 for the fit's first attempt
    ("error_type", "large_string"),  # an exception's class, or memory/worker-lost/timeout
    ("message", "large_string"),
    ("traceback", "large_string"),
    ("at", "float64"),  # when the failure was recorded (time.time())
)
# each column read with SQLite's CAST to its type: a value SQLite stored in another storage
# class (its columns allow any) cannot change the file's schema
_CASTS = {"int64": "INTEGER", "large_string": "TEXT", "float64": "REAL"}
_SELECT_ERRORS = (
    "SELECT "
    + ", ".join(f"CAST({name} AS {_CASTS[kind]})" for name, kind in ERRORS_COLUMNS)
    + " FROM errors ORDER BY id"
)


def errors_schema() -> Any:
    """The Arrow schema of progress/errors.parquet (ERRORS_COLUMNS)."""
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in ERRORS_COLUMNS])


def errors_table(conn: sqlite3.Connection) -> Any:
    """The store's errors table in id order, as an Arrow table of `errors_schema()`."""
    import pyarrow as pa

    schema = errors_schema()
    rows = conn.execute(_SELECT_ERRORS).fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = [
        _column(values, kind) for values, (_, kind) in zip(columns, ERRORS_COLUMNS, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _column(values: Sequence[Any], kind: str) -> Any:
    """An Arrow array of `kind` of one column's values (None as null), built from buffers:
    pyarrow's own `pa.array` imports pandas, which the train process otherwise never loads."""
    import pyarrow as pa

    from pipeline.data.arrow_columns import strings

    if kind == "large_string":
        return strings(values, large=True)
    null = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    data = np.array([0 if v is None else v for v in values], dtype=kind)
    validity, count = None, int(null.sum())
    if count:
        validity = pa.py_buffer(np.packbits(~null, bitorder="little"))
    return pa.Array.from_buffers(
        getattr(pa, kind)(), len(data), [validity, pa.py_buffer(data)], count
    )


def write_errors(conn: sqlite3.Connection, output_dir: str | Path) -> None:
    """Write progress/errors.parquet (every failure with its traceback, in id order): what
    train exports at its end. A progress/progress.parquet of this product (an earlier
    version's export, or `write_export`'s) would now be stale: it is removed."""
    from pipeline.runtime.store.manifest import active

    out = Path(output_dir) / PROGRESS_DIR
    _write_table(out / "errors.parquet", errors_table(conn))
    stale = out / "progress.parquet"
    if stale.exists() and active(output_dir).owns(stale):
        stale.unlink()


def write_export(conn: sqlite3.Connection, output_dir: str | Path) -> None:
    """Write progress/progress.parquet (one row per forecast, ROW_COLUMNS, in sorted row
    groups) and progress/errors.parquet, both from one read of the store: the whole per-row
    view as files, on demand (train writes only the errors: write_errors)."""
    out = Path(output_dir) / PROGRESS_DIR
    conn.execute("BEGIN")
    try:
        states = load_groups(conn)
        tasks, errors = side_tables(conn)
        every_error = errors_table(conn)
    finally:
        conn.execute("COMMIT")
    write_rows(out / "progress.parquet", row_chunks(states, tasks, errors))
    _write_table(out / "errors.parquet", every_error)


def _write_table(path: Path, table: Any) -> None:
    """An Arrow table as pipeline.io.write_parquet writes a frame (zstd, statistics)."""
    write_parquet_tables(path, table.schema, [table])
