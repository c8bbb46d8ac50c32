"""The progress store's writes made cheaper (issue 18 item 7) read back the same: a new store
has 64 KiB pages and a store made with SQLite's default 4 KiB pages (earlier qpipes) is used as
it is, with the same per-row view; the writer's in-memory mirror (events applied from their
decoded fits, runs of positions as slices) equals what a reader derives from the events; an
all-zero array packs to zlib's own bytes."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from test_progress import JAN18, NO_ALPHA, QS, group, task

from pipeline.runtime.store.progress import ProgressStore, db_path, read_table
from pipeline.runtime.store.progress_format import pack, unpack
from pipeline.runtime.store.progress_groups import load_groups

FAILURE = {"error_type": "ValueError", "message": "boom", "traceback": "Traceback: boom"}


def _study() -> list:
    countries = [f"C{i:02d}" for i in range(6)]
    return [
        group({(c, JAN18 + m): f"{h}-{c}-{m}" for c in countries for m in range(5)}, horizon=h)
        for h in (1, 3)
    ]


def _run(path: Path) -> ProgressStore:
    """A run's writes: runs of consecutive fits and scattered ones, done, failed, retried."""
    groups = _study()
    store = ProgressStore(path)
    store.sync("m", groups, QS, "run1")
    rng = np.random.default_rng(3)
    for gi, g in enumerate(groups):
        later = np.arange(10, len(g))
        scattered = np.sort(rng.choice(later, size=7, replace=False))
        for fits in (np.arange(10), scattered, np.setdiff1d(later, scattered)):
            t = store.start_task("m", gi, fits, "run1")
            pred = rng.normal(size=(fits.size, 1, 1, len(QS)))
            done, failed = fits[::2], fits[1::2]
            store.record_done("m", "run1", gi, done, pred[::2], NO_ALPHA.repeat(done.size, 0),
                              t, task(), fits.size)  # fmt: skip
            if failed.size:
                store.record_failed("m", "run1", gi, failed, [FAILURE] * failed.size, t, task())
        retry = store.start_task("m", gi, np.array([1]), "run1")  # a retry: attempts bump
        store.record_done("m", "run1", gi, np.array([1]), np.ones((1, 1, 1, 3)), NO_ALPHA,
                          retry, task(), 1)  # fmt: skip
    return store


def test_the_writers_mirror_is_what_a_reader_derives(tmp_path: Path) -> None:
    store = _run(db_path(tmp_path))
    try:
        read = load_groups(store.conn, "m", values=False)
        mirror = store._states["m"]
        assert len(read) == len(mirror) == 2
        for r, m in zip(read, mirror, strict=True):
            for name in ("status", "attempts", "task", "error"):
                assert np.array_equal(getattr(r, name), getattr(m, name)), name
            assert [r.runs[i] for i in r.run] == [m.runs[i] for i in m.run]
            assert r.attempts[1] == 2 and r.attempts.max() == 2  # the retried fit
    finally:
        store.close()
    view = read_table(db_path(tmp_path), "progress")
    assert len(view) == 2 * 30 * len(QS)
    # every other fit of each task failed (5 of 10, 3 of 7, 6 of 13), fit 1 then succeeded
    failed = view[view["status"] == "failed"]
    assert (
        len(failed) == 2 * (5 + 3 + 6 - 1) * len(QS) and failed["error_type"].eq("ValueError").all()
    )
    done = view[view["status"] == "done"]
    assert done["forecast"].notna().all() and failed["forecast"].isna().all()


@pytest.mark.parametrize("dtype", ["u1", "<i4", "<i8"])
def test_an_all_zero_array_packs_to_zlibs_own_bytes(dtype: str) -> None:
    for n in (0, 5, 70_000, 250_800):
        zeros = np.zeros(n, dtype=dtype)
        assert pack(zeros) == zlib.compress(zeros.tobytes(), 1)
        assert np.array_equal(unpack(pack(zeros), dtype, (n,)), zeros)
    ones = np.zeros(70_000, dtype=dtype)
    ones[-1] = 1  # not all zero: packed as it is, not the cached zeros
    assert np.array_equal(unpack(pack(ones), dtype, ones.shape), ones)
