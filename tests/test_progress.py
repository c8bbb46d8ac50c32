"""The SQLite (WAL) progress store: transitions, key changes, readers that never block, export,
its size per fit, and an old-format store rebuilt instead of a crash."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.runtime.fits.fit_groups import FitGroup
from pipeline.runtime.store.progress import ProgressStore, db_path, read_table
from pipeline.runtime.store.progress_groups import load_groups
from pipeline.runtime.store.progress_view import connect_ro, fit_counts
from pipeline.runtime.ui.monitor import monitor

QS = (0.1, 0.5, 0.9)
NO_ALPHA = np.full((1, 3), np.nan)


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def group(fits: dict[tuple[str, int], str], horizon: int = 1) -> FitGroup:
    """Per-country fits {(country, origin month index): key name} of one horizon."""
    items = sorted(fits.items())
    return FitGroup(
        model="m",
        horizon=horizon,
        horizons=(horizon,),
        key_raw=np.array([bytes.fromhex(key(k)) for _, k in items], dtype="S32"),
        country=np.array([c for (c, _), _ in items], dtype=object),
        origin=np.array([o for (_, o), _ in items], dtype=np.int64),
        countries=np.array([[c] for (c, _), _ in items], dtype=object),
        rows=np.ones((len(items), 1), dtype=bool),
        data={},
    )


def task(seconds: float = 2.0) -> dict[str, object]:
    return {
        "worker": "host:1",
        "started": 1.0,
        "finished": 3.0,
        "seconds": seconds,
        "peak_mb": 400.0,
    }


def pred(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64).reshape(1, 1, 1, len(values))


JAN18 = 2018 * 12


def test_fits_move_through_statuses_and_keep_tracebacks(tmp_path: Path) -> None:
    g = group({("AA", JAN18): "k1", ("BB", JAN18): "k2"})
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync("m", [g], QS, "run1")
        assert store.counts() == {"m": {"pending": 2, "training": 0, "done": 0, "failed": 0}}
        t = store.start_task("m", 0, np.array([0, 1]), "run1")
        assert store.counts()["m"]["training"] == 2  # fits, not rows
        store.record_done(
            "m", "run1", 0, np.array([0]), pred(1.0, 5.0, 9.0), NO_ALPHA, t, task(), 2
        )
        failure = {"error_type": "ValueError", "message": "boom", "traceback": "Traceback: boom"}
        store.record_failed("m", "run1", 0, np.array([1]), [failure], t, task())
        assert store.counts("m") == {"m": {"pending": 0, "training": 0, "done": 1, "failed": 1}}
        assert [m.tolist() for m in store.done_mask("m")] == [[True, False]]
        store.export(tmp_path)
    progress = pd.read_parquet(tmp_path / "progress" / "progress.parquet")
    assert len(progress) == 6  # one row per (model, country, quantile, horizon, origin)
    done = progress[progress["key"] == key("k1")]
    assert done["forecast"].tolist() == [1.0, 5.0, 9.0] and done["quantile"].tolist() == list(QS)
    assert (done["origin"] == "2018-01-01").all() and (done["horizon"] == 1).all()
    assert (
        (done["seconds"] == 1.0).all()
        and (done["attempts"] == 1).all()
        and (done["worker"] == "host:1").all()
        and done["error_type"].isna().all()
    )
    failed = progress[progress["key"] == key("k2")]
    assert (failed["error_type"] == "ValueError").all() and (failed["attempts"] == 1).all()
    assert (failed["error_message"] == "boom").all() and (failed["status"] == "failed").all()
    errors = pd.read_parquet(tmp_path / "progress" / "errors.parquet")
    assert errors[["key", "country", "attempt", "error_type", "traceback"]].values.tolist() == [
        [key("k2"), "BB", 1, "ValueError", "Traceback: boom"]
    ]


def test_the_per_row_view_is_derived_on_read_and_train_leaves_no_stale_export(
    tmp_path: Path,
) -> None:
    from pipeline.runtime.store.manifest import MANIFEST_FILE, OutputFiles
    from pipeline.runtime.store.progress_view import failed_rows

    g = group({("AA", JAN18): "k1", ("BB", JAN18): "k2", ("CC", JAN18): "k3"})
    failure = {"error_type": "ValueError", "message": "boom", "traceback": "Traceback: boom"}
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync("m", [g], QS, "run1")
        t = store.start_task("m", 0, np.array([0, 1, 2]), "run1")
        store.record_done(
            "m", "run1", 0, np.array([0]), pred(1.0, 5.0, 9.0), NO_ALPHA, t, task(), 3
        )
        store.record_failed("m", "run1", 0, np.array([2]), [failure], t, task())
        store.export(tmp_path)  # on demand: the whole per-row view as a file
        whole = pd.read_parquet(tmp_path / "progress" / "progress.parquet")
        # the failed fit's rows, as the whole view has them (assemble labels them `failed`)
        failed = failed_rows(db_path(tmp_path))
        expected = whole[whole["status"] == "failed"].reset_index(drop=True)
        pd.testing.assert_frame_equal(failed, expected)
        assert failed["country"].tolist() == ["CC"] * 3 and len(whole) == 9
        pd.testing.assert_frame_equal(read_table(db_path(tmp_path), "progress"), whole)
        # train's own export: the errors; the per-row file, the product's own, now stale, goes
        files = OutputFiles(tmp_path)
        files.written.add("progress/progress.parquet")
        files.save()
        store.export_errors(tmp_path)
        assert not (tmp_path / "progress" / "progress.parquet").exists()
        assert pd.read_parquet(tmp_path / "progress" / "errors.parquet")["key"].tolist() == [
            key("k3")
        ]
        # a user's file of that name (not in the manifest) is left alone
        (tmp_path / "progress" / "progress.parquet").write_bytes(b"mine")
        (tmp_path / MANIFEST_FILE).unlink()
        OutputFiles(tmp_path).save()
        store.export_errors(tmp_path)
        assert (tmp_path / "progress" / "progress.parquet").read_bytes() == b"mine"


def test_monitor_export_writes_the_view_on_demand_and_keeps_a_users_file(tmp_path: Path) -> None:
    """`monitor --export`: the per-row view as files, recorded as the product's (so train's
    next run removes it as stale); a user's file there, or no store, exits 2 and keeps all."""
    import subprocess
    import sys

    from conftest import ROOT

    def export(out: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", "monitor", "--output-dir", str(out)]
        return subprocess.run([*command, "--export"], cwd=ROOT, capture_output=True, text=True)

    missing = export(tmp_path / "none")
    assert missing.returncode == 2 and "progress.sqlite" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    g = group({("AA", JAN18): "k1", ("BB", JAN18): "k2"})
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync("m", [g], QS, "run1")
        t = store.start_task("m", 0, np.array([0, 1]), "run1")
        store.record_done(
            "m", "run1", 0, np.array([0]), pred(1.0, 5.0, 9.0), NO_ALPHA, t, task(), 2
        )
    exported = tmp_path / "progress" / "progress.parquet"
    result = export(tmp_path)
    assert result.returncode == 0, result.stderr
    pd.testing.assert_frame_equal(
        pd.read_parquet(exported), read_table(db_path(tmp_path), "progress")
    )
    with ProgressStore(db_path(tmp_path)) as store:
        store.export_errors(tmp_path)  # what train does at its end: the export is stale
    assert not exported.exists()
    from pipeline.runtime.store.manifest import MANIFEST_FILE, OutputFiles

    exported.write_bytes(b"mine")  # a user's file of that name (not in the manifest)
    (tmp_path / MANIFEST_FILE).unlink()
    OutputFiles(tmp_path).save()
    refused = export(tmp_path)
    assert refused.returncode == 2 and "not written by this pipeline" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert exported.read_bytes() == b"mine"


def test_a_new_key_resets_only_its_fits_and_removed_fits_disappear(tmp_path: Path) -> None:
    g = group({("AA", JAN18): "k1", ("BB", JAN18): "k2", ("CC", JAN18): "k3"})
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync("m", [g], QS, "run1")
        for i in (0, 1):
            t = store.start_task("m", 0, np.array([i]), "run1")
            store.record_done("m", "run1", 0, np.array([i]), pred(1, 2, 3), NO_ALPHA, t, task(), 1)
        store.compact("m")
        store.sync("m", [group({("AA", JAN18): "k1", ("BB", JAN18): "k2-new"})], QS, "run2")
        table = read_table(db_path(tmp_path), "progress").set_index("country")
    assert set(table.index) == {"AA", "BB"}
    assert (table.loc["AA", "status"] == "done").all() and (table.loc["AA", "attempts"] == 1).all()
    assert table.loc["AA", "forecast"].tolist() == [1, 2, 3]  # carried over from the snapshot
    assert (table.loc["BB", "status"] == "pending").all()
    assert (table.loc["BB", "attempts"] == 0).all() and table.loc["BB", "forecast"].isna().all()


def test_a_fits_state_follows_its_key_across_groups_and_positions(tmp_path: Path) -> None:
    """sync matches the store's keys in bulk (key_match.KeyMatcher): a fit keeps its state
    when its key moves to another group or position (countries added before it), and only
    there; a new key starts pending."""
    h1 = group({("BB", JAN18): "k1", ("DD", JAN18): "k2"}, horizon=1)
    h2 = group({("BB", JAN18): "k3", ("DD", JAN18): "k4"}, horizon=2)
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync("m", [h1, h2], QS, "run1")
        for gi, i in ((0, 0), (1, 1)):  # k1 and k4 done
            t = store.start_task("m", gi, np.array([i]), "run1")
            store.record_done(
                "m", "run1", gi, np.array([i]), pred(gi, 2, 3), NO_ALPHA, t, task(), 1
            )
        t = store.start_task("m", 0, np.array([1]), "run1")
        failure = {"error_type": "ValueError", "message": "boom", "traceback": "Traceback"}
        store.record_failed("m", "run1", 0, np.array([1]), [failure], t, task())  # k2 failed
        store.compact("m")
        # the same keys under other countries' positions and the other horizon's group
        moved1 = group({("AA", JAN18): "k4", ("CC", JAN18): "k2", ("EE", JAN18): "k5"}, 1)
        moved2 = group({("AA", JAN18): "k1", ("CC", JAN18): "k3"}, horizon=2)
        store.sync("m", [moved1, moved2], QS, "run2")
        table = read_table(db_path(tmp_path), "progress")
    status = table.groupby(["horizon", "country"])["status"].agg(set).map(list).map(tuple)
    assert status.to_dict() == {
        (1, "AA"): ("done",),  # k4
        (1, "CC"): ("failed",),  # k2
        (1, "EE"): ("pending",),  # k5: new
        (2, "AA"): ("done",),  # k1
        (2, "CC"): ("pending",),  # k3: known, never trained
    }
    k4 = table[(table["horizon"] == 1) & (table["country"] == "AA")]
    assert k4["forecast"].tolist() == [1, 2, 3]  # k4's forecasts came with it


def test_counts_read_the_statuses_alone_and_equal_the_whole_states(tmp_path: Path) -> None:
    """counts (what a no-op run asks) reads the statuses and the events' fit lists only; its
    counts are those of the whole states, before and after compaction, per model and in all."""
    fits = {("AA", JAN18): "k1", ("BB", JAN18): "k2", ("CC", JAN18): "k3", ("DD", JAN18): "k4"}
    failure = {"error_type": "ValueError", "message": "boom", "traceback": "Traceback"}
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync("m", [group(fits), group(fits, horizon=2)], QS, "run1")
        store.sync("n", [group({("AA", JAN18): "n1"})], QS, "run1")
        t = store.start_task("m", 0, np.array([0, 1, 2]), "run1")
        store.record_done("m", "run1", 0, np.array([0]), pred(1, 2, 3), NO_ALPHA, t, task(), 3)
        store.record_failed("m", "run1", 0, np.array([2]), [failure], t, task())
        t = store.start_task("m", 1, np.array([3]), "run1")
        store.record_done("m", "run1", 1, np.array([3]), pred(1, 2, 3), NO_ALPHA, t, task(), 1)
        expected = {
            "m": {"pending": 4, "training": 1, "done": 2, "failed": 1},
            "n": {"pending": 1, "training": 0, "done": 0, "failed": 0},
        }
        for compacted in (False, True):
            whole = fit_counts(load_groups(store.conn, values=False))
            assert store.counts() == whole == expected, compacted
            assert store.counts("m") == {"m": expected["m"]}
            store.compact("m")
            expected["m"].update(pending=5, training=0)  # compaction: training -> pending


def test_fits_left_training_by_a_dead_run_go_back_to_pending(tmp_path: Path) -> None:
    with ProgressStore(db_path(tmp_path)) as store:  # a run killed mid-task: no compaction
        store.sync("m", [group({("AA", JAN18): "k1"})], QS, "run1")
        store.start_task("m", 0, np.array([0]), "run1")
    with ProgressStore(db_path(tmp_path)) as store:
        store.sync("m", [group({("AA", JAN18): "k1"})], QS, "run2")
        assert store.counts()["m"]["pending"] == 1


def test_readers_never_block_the_writer(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with ProgressStore(path) as store:
        store.sync("m", [group({("AA", JAN18): "k1"})], QS, "run1")
        t = store.start_task("m", 0, np.array([0]), "run1")
        reader = connect_ro(path, timeout=0.1)
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reader.execute("BEGIN")  # a long read transaction holds its snapshot ...
        assert fit_counts(load_groups(reader))["m"]["training"] == 1
        t0 = time.perf_counter()
        store.record_done("m", "run1", 0, np.array([0]), pred(1, 2, 3), NO_ALPHA, t, task(), 1)
        store.compact("m")
        assert time.perf_counter() - t0 < 1.0  # ... and the writer commits anyway
        assert fit_counts(load_groups(reader))["m"]["training"] == 1
        reader.execute("COMMIT")
        assert fit_counts(load_groups(reader))["m"]["done"] == 1
        reader.close()


def test_runs_table_records_the_dashboard_and_state(tmp_path: Path) -> None:
    with ProgressStore(db_path(tmp_path)) as store:
        store.start_run("r1", "m", 123, "logs/r1.log")
        store.update_run("r1", dashboard="http://127.0.0.1:8787/status", n_workers=2)
        runs = read_table(db_path(tmp_path), "runs")
        assert runs.loc[0, "state"] == "running" and runs.loc[0, "dashboard"].endswith("/status")
        store.update_run("r1", state="finished", finished=time.time())
    assert read_table(db_path(tmp_path), "runs").loc[0, "state"] == "finished"


def test_the_store_grows_by_at_most_100_bytes_per_fit(tmp_path: Path) -> None:
    """20,000 per-country fits (100 countries x 200 origins, one horizon) trained in tasks of
    100 fits, then compacted as a run's end does."""
    countries = [f"C{c:03d}" for c in range(100)]
    fits = {(c, JAN18 + o): f"{c}-{o}" for c in countries for o in range(200)}
    g = group(fits)
    rng = np.random.default_rng(0)
    path = db_path(tmp_path)
    with ProgressStore(path) as store:
        store.sync("m", [g], QS, "run1")
        for part in np.array_split(np.arange(len(g)), len(g) // 100):
            t = store.start_task("m", 0, part, "run1")
            values = np.sort(rng.normal(size=(part.size, 1, 1, 3)), axis=-1)
            store.record_done(
                "m", "run1", 0, part, values, np.full((part.size, 3), np.nan), t, task(), part.size
            )
        store.compact("m")
        assert store.counts()["m"]["done"] == len(g)
    size = sum(p.stat().st_size for p in path.parent.glob("progress.sqlite*"))
    print(f"{size / len(g):.1f} bytes per fit")
    assert size / len(g) <= 100, f"{size / len(g):.0f} bytes per fit"
    table = read_table(path, "progress")
    assert len(table) == 3 * len(g) and (table["status"] == "done").all()


def test_an_old_format_store_is_moved_aside_and_rebuilt(tmp_path: Path, capsys) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as old:  # format 1: one row per forecast row
        old.execute("CREATE TABLE progress (model TEXT, country TEXT, status TEXT)")
        old.execute("INSERT INTO progress VALUES ('m', 'AA', 'done')")
    assert monitor(tmp_path) == 2
    out = capsys.readouterr().out
    assert "earlier qpipe" in out and "rebuilds it" in out and "Traceback" not in out
    with ProgressStore(path) as store:
        assert store.rebuilt_from is not None and store.rebuilt_from.parent.name == "old"
        assert store.rebuilt_from.exists() and store.counts() == {}
    assert monitor(tmp_path) == 0
