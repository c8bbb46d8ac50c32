"""The SQLite (WAL) progress store: transitions, key changes, readers that never block, export."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pandas as pd

from pipeline.runtime.store.progress import ProgressStore, db_path, read_table

QS = (0.1, 0.5, 0.9)


def rows(keys: dict[tuple[str, int, str], str]) -> list[tuple[str, float, int, str, str]]:
    return [(c, q, h, o, k) for (c, h, o), k in sorted(keys.items()) for q in QS]


def task(seconds: float = 2.0) -> dict[str, object]:
    return {
        "worker": "host:1",
        "started": 1.0,
        "finished": 3.0,
        "seconds": seconds,
        "peak_mb": 400.0,
    }


def test_rows_move_through_statuses_and_keep_tracebacks(tmp_path: Path) -> None:
    keys = {("AA", 1, "2018-01-01"): "k1", ("BB", 1, "2018-01-01"): "k2"}
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync_rows("m", rows(keys), "run1")
        assert store.counts() == {"m": {"pending": 6}}
        store.set_status("m", ["k1", "k2"], "training", "run1")
        store.record_done(
            "m", "run1", [("k1", "AA", 1, q, 10.0 * q, None) for q in QS], task(), n_fits=2
        )
        store.record_failed(
            "m",
            "run1",
            [
                {
                    "key": "k2",
                    "error_type": "ValueError",
                    "message": "boom",
                    "traceback": "Traceback: boom",
                }
            ],
            task(),
        )
        assert store.counts("m") == {"m": {"done": 3, "failed": 3}}
        assert store.done_forecasts("m") == {"k1": [("AA", 1, q, 10.0 * q, None) for q in QS]}
        store.export(tmp_path)
    progress = pd.read_parquet(tmp_path / "progress" / "progress.parquet")
    done = progress[progress["key"] == "k1"]
    assert (
        (done["seconds"] == 1.0).all()
        and (done["attempts"] == 1).all()
        and (done["worker"] == "host:1").all()
    )
    failed = progress[progress["key"] == "k2"]
    assert (failed["error_type"] == "ValueError").all() and (failed["attempts"] == 1).all()
    errors = pd.read_parquet(tmp_path / "progress" / "errors.parquet")
    assert errors[["key", "country", "error_type", "traceback"]].values.tolist() == [
        ["k2", "BB", "ValueError", "Traceback: boom"]
    ]


def test_a_new_key_resets_only_its_rows_and_removed_fits_disappear(tmp_path: Path) -> None:
    keys = {
        ("AA", 1, "2018-01-01"): "k1",
        ("BB", 1, "2018-01-01"): "k2",
        ("CC", 1, "2018-01-01"): "k3",
    }
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync_rows("m", rows(keys), "run1")
        for k, c in (("k1", "AA"), ("k2", "BB")):
            store.record_done("m", "run1", [(k, c, 1, q, q, None) for q in QS], task(), n_fits=1)
        keys2 = {("AA", 1, "2018-01-01"): "k1", ("BB", 1, "2018-01-01"): "k2-new"}
        store.sync_rows("m", rows(keys2), "run2")
        table = read_table(db_path(tmp_path), "progress").set_index("country")
    assert set(table.index) == {"AA", "BB"}
    assert (table.loc["AA", "status"] == "done").all() and (table.loc["AA", "attempts"] == 1).all()
    assert (table.loc["BB", "status"] == "pending").all() and (
        table.loc["BB", "attempts"] == 0
    ).all()
    assert table.loc["BB", "forecast"].isna().all()


def test_readers_never_block_the_writer(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with ProgressStore(path) as store:
        store.sync_rows("m", rows({("AA", 1, "2018-01-01"): "k1"}), "run1")
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reader.execute("BEGIN")  # a long read transaction holds its snapshot ...
        assert (
            reader.execute("SELECT COUNT(*) FROM progress WHERE status = 'pending'").fetchone()[0]
            == 3
        )
        t0 = time.perf_counter()
        store.record_done("m", "run1", [("k1", "AA", 1, q, q, None) for q in QS], task(), n_fits=1)
        assert time.perf_counter() - t0 < 1.0  # ... and the writer commits anyway
        assert (
            reader.execute("SELECT COUNT(*) FROM progress WHERE status = 'pending'").fetchone()[0]
            == 3
        )
        reader.execute("COMMIT")
        assert (
            reader.execute("SELECT COUNT(*) FROM progress WHERE status = 'done'").fetchone()[0] == 3
        )
        reader.close()


def test_runs_table_records_the_dashboard_and_state(tmp_path: Path) -> None:
    with ProgressStore(db_path(tmp_path)) as store:
        store.start_run("r1", "m", 123, "logs/r1.log")
        store.update_run("r1", dashboard="http://127.0.0.1:8787/status", n_workers=2)
        runs = read_table(db_path(tmp_path), "runs")
        assert runs.loc[0, "state"] == "running" and runs.loc[0, "dashboard"].endswith("/status")
        store.update_run("r1", state="finished", finished=time.time())
    assert read_table(db_path(tmp_path), "runs").loc[0, "state"] == "finished"
