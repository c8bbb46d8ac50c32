"""progress/errors.parquet has one fixed schema (progress_export.ERRORS_COLUMNS) whatever the
failures held, so that the files of many runs concatenate (issue 18, item 8): no failure, one
with a message and a traceback, ones without (NULLs), and the on-demand export all agree."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from test_progress import QS, group, key, task

from pipeline.io import write_parquet
from pipeline.runtime.store.progress import ProgressStore, db_path
from pipeline.runtime.store.progress_export import ERRORS_COLUMNS, errors_schema

JAN18 = 2018 * 12
FITS = {("AA", JAN18): "k1", ("BB", JAN18): "k2", ("CC", JAN18): "k3"}
BOOM = {"error_type": "ValueError", "message": "boom", "traceback": "Traceback: boom"}
BARE = {"error_type": "memory", "message": "", "traceback": "é"}


def _export(out: Path, failures: list[dict[str, str]], nulls: str = "") -> Path:
    """errors.parquet of a store whose first fits failed with `failures`; `nulls`: an UPDATE
    of the errors table after them (columns SQLite holds as NULL or in another storage class)."""
    with ProgressStore(db_path(out)) as store:
        store.sync("m", [group(FITS)], QS, "run1")
        if failures:
            fits = np.arange(len(failures))
            t = store.start_task("m", 0, fits, "run1")
            store.record_failed("m", "run1", 0, fits, failures, t, task())
        if nulls:
            with store.conn:
                store.conn.execute(nulls)
        store.export_errors(out)
    return out / "progress" / "errors.parquet"


def test_every_run_writes_the_same_errors_schema(tmp_path: Path) -> None:
    cases = {
        "none": ([], ""),
        "one": ([BOOM], ""),
        "two": ([BOOM, BARE], ""),
        "nulls": ([BOOM, BARE], "UPDATE errors SET horizon = NULL, message = NULL"),
        "all_null": (
            [BOOM],
            "UPDATE errors SET run_id = NULL, model = NULL, key = NULL, country = NULL, "
            "horizon = NULL, origin = NULL, attempt = NULL, error_type = NULL, message = NULL, "
            "traceback = NULL, at = NULL",
        ),
        # SQLite keeps a value of another storage class as it is; the file's types hold
        "odd_classes": ([BOOM], "UPDATE errors SET horizon = 2.0, attempt = '3', at = 7"),
    }
    files = {name: _export(tmp_path / name, *case) for name, case in cases.items()}
    schema = errors_schema()
    text, integer = pa.large_string(), pa.int64()
    assert schema == pa.schema(
        [("id", integer), ("run_id", text), ("model", text), ("key", text), ("country", text),
         ("horizon", integer), ("origin", text), ("attempt", integer), ("error_type", text),
         ("message", text), ("traceback", text), ("at", pa.float64())]
    )  # fmt: skip
    tables = {name: pq.read_table(path) for name, path in files.items()}
    for name, table in tables.items():
        assert table.schema.equals(schema), (name, table.schema)
    assert tables["none"].num_rows == 0
    assert tables["nulls"].column("horizon").to_pylist() == [None, None]
    assert tables["nulls"].column("message").to_pylist() == [None, None]
    assert tables["all_null"].column("at").null_count == 1
    assert tables["odd_classes"].column("horizon").to_pylist() == [2]
    assert tables["odd_classes"].column("attempt").to_pylist() == [3]
    assert tables["odd_classes"].column("at").to_pylist() == [7.0]
    assert tables["two"].column("key").to_pylist() == [key("k1"), key("k2")]
    # readers concatenate runs: Arrow's concat_tables needs equal schemas (pyarrow's
    # dataset reader, one schema for every file, too)
    assert pa.concat_tables(tables.values()).num_rows == 1 + 2 + 2 + 1 + 1


def test_the_columns_are_the_stores_errors_table(tmp_path: Path) -> None:
    """A column added to the store's errors table must be added to the file's schema too."""
    _export(tmp_path, [])
    with sqlite3.connect(db_path(tmp_path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(errors)")]
    assert columns == [name for name, _ in ERRORS_COLUMNS]


def test_the_on_demand_export_writes_the_same_errors_file(tmp_path: Path) -> None:
    """`monitor --export` (ProgressStore.export) and train's export_errors agree."""
    path = _export(tmp_path, [BOOM, BARE])
    by_train = path.read_bytes()
    with ProgressStore(db_path(tmp_path)) as store:
        store.export(tmp_path)
    assert path.read_bytes() == by_train
    assert (tmp_path / "progress" / "progress.parquet").exists()


def test_a_file_of_typed_failures_has_the_bytes_pandas_wrote(tmp_path: Path) -> None:
    """Where every column holds values of its type (the usual file), the bytes are what the
    pandas path wrote before the schema was fixed: only empty files and files with NULL
    columns or integers changed."""
    path = _export(tmp_path, [BOOM, BARE])
    with sqlite3.connect(db_path(tmp_path)) as conn:
        frame = pd.read_sql_query("SELECT * FROM errors ORDER BY id", conn)
    write_parquet(tmp_path / "pandas.parquet", frame)
    assert path.read_bytes() == (tmp_path / "pandas.parquet").read_bytes()
