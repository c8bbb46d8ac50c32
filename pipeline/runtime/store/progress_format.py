"""The progress store's format 2: its fits as arrays per group, encoded and decoded in one place
(how a group's state changes and is read back with its events: progress_groups.py).

The store (pipeline/runtime/store/progress.py writes it) keeps a run's progress per fit group,
not per forecast row, so that it grows by tens of bytes per fit:

table `groups`, one row per (model, grp): the group's fit plan and the snapshot of its fits'
  state as arrays: `keys` F x 32 raw sha256 bytes; zlib-packed `country` (F, C) int32 indexes
  into `names` (JSON), `rows` (F, C) uint8 (forecast row exists), `origin` (F,) int32 month
  index; `status` (F,) uint8 (index into STATUSES), `attempts` (F,) int32, `task` (F,) int64
  (tasks.id of the last attempt, 0 none), `run` (F,) int32 (index into `runs`, JSON run ids),
  `error` (F,) int64 (errors.id of the last failure, 0 none); raw float64 `forecast`
  (F, C, H, Q) and `alpha` (F, Q) (NULL when every value is NaN).
table `events`: what happened since the snapshot, one row per task transition (training,
  done, failed, loaded), applied in id order on read; the driver folds them into the snapshot
  at the start of each train run (`sync`) and at the end of a stopped one (`compact`). `fits`
  are delta-encoded positions in the group.
table `tasks`: one row per task run (worker, started, finished, seconds per fit, peak_mb).
table `errors`: one row per failed fit with its full traceback; table `runs`: one per train run.

The seed's per (model, country, quantile, horizon, origin) view (progress_view.py: `read_table(
path, "progress")`, the parquet export) is derived from these arrays on read.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime.fits.keys import KEY_BYTES

PROGRESS_DIR = Path("progress")  # under the output dir: the store and its exports
FORMAT = 2  # PRAGMA user_version of the store; format 1 was one row per forecast row

# the tables the module docstring describes, as the store creates them
SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    model TEXT NOT NULL, grp INTEGER NOT NULL, horizons TEXT NOT NULL, quantiles TEXT NOT NULL,
    names TEXT NOT NULL, runs TEXT NOT NULL, n_fits INTEGER NOT NULL, n_cols INTEGER NOT NULL,
    keys BLOB NOT NULL, country BLOB NOT NULL, rows BLOB NOT NULL, origin BLOB NOT NULL,
    status BLOB NOT NULL, attempts BLOB NOT NULL, task BLOB NOT NULL, run BLOB NOT NULL,
    error BLOB NOT NULL, forecast BLOB, alpha BLOB,
    PRIMARY KEY (model, grp)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, grp INTEGER NOT NULL, status TEXT NOT NULL,
    fits BLOB NOT NULL, run_id TEXT NOT NULL, task INTEGER, bump INTEGER NOT NULL,
    error BLOB, forecast BLOB, alpha BLOB
);
CREATE INDEX IF NOT EXISTS events_model ON events (model, id);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY, model TEXT, worker TEXT, started REAL, finished REAL,
    seconds REAL, peak_mb REAL
);
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
STATUSES = ("pending", "training", "done", "failed")
PENDING, TRAINING, DONE, FAILED = range(4)


class OldFormat(sqlite3.DatabaseError):
    """The store was written by an earlier qpipe (another format): derived data, rebuilt."""


# --- codecs -------------------------------------------------------------------------------------


def pack(array: np.ndarray) -> bytes:
    """zlib level 1 of the array's bytes (statuses, indexes and runs compress to almost nothing).
    An all-zero array (a fresh group's statuses, attempts, tasks, runs and errors) is packed
    once per length: the groups of a study mostly share their length."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # no copy
    if flat.size >= _ZEROS_FROM and not flat.any():
        return _zeros(flat.size)
    return zlib.compress(flat, 1)


_ZEROS_FROM = 1 << 16  # bytes: below, zlib costs less than the check


@lru_cache(maxsize=32)
def _zeros(n: int) -> bytes:
    return zlib.compress(bytes(n), 1)


def unpack(blob: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=dtype).reshape(shape).copy()


def pack_index(index: np.ndarray) -> bytes:
    """Positions in a group, delta-encoded (a task's fits are mostly consecutive)."""
    index = np.asarray(index, dtype=np.int64)
    return pack(np.diff(index, prepend=0).astype("<i4"))


def unpack_index(blob: bytes) -> np.ndarray:
    return np.cumsum(np.frombuffer(zlib.decompress(blob), dtype="<i4"), dtype=np.int64)


def floats(blob: bytes | memoryview | None, shape: tuple[int, ...]) -> np.ndarray:
    if blob is None:
        return np.full(shape, np.nan)
    return np.frombuffer(blob, dtype="<f8").reshape(shape).copy()


def float_blob(array: np.ndarray) -> memoryview | None:
    """The array's float64 bytes as a view (SQLite copies a bound blob itself); None when
    every value is NaN."""
    array = np.asarray(array, dtype="<f8")
    return None if np.isnan(array).all() else raw_blob(array, "<f8")


def raw_blob(array: np.ndarray, dtype: str) -> memoryview:
    """The array's bytes as `dtype`, a view of it where it is one already: a blob to bind."""
    return memoryview(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))


# --- the fits of one group, and its `groups` row -------------------------------------------------


@dataclass
class GroupState:
    """One fit group's plan and its fits' state (F fits, C forecast rows each, H horizons, Q
    levels)."""

    model: str
    grp: int
    horizons: tuple[int, ...]
    quantiles: tuple[float, ...]
    names: np.ndarray  # (n,) country codes that `country` indexes
    keys: np.ndarray  # (F, 32) uint8
    country: np.ndarray  # (F, C) int32
    rows: np.ndarray  # (F, C) bool
    origin: np.ndarray  # (F,) int32 month index
    status: np.ndarray  # (F,) uint8: index into STATUSES
    attempts: np.ndarray  # (F,) int32
    task: np.ndarray  # (F,) int64: tasks.id, 0 none
    run: np.ndarray  # (F,) int32: index into runs, -1 none
    runs: list[str]
    error: np.ndarray  # (F,) int64: errors.id, 0 none
    forecast: np.ndarray | None  # (F, C, H, Q) float64 (None: not read)
    alpha: np.ndarray | None  # (F, Q) float64

    def __len__(self) -> int:
        return int(self.status.shape[0])

    def run_index(self, run_id: str) -> int:
        if run_id not in self.runs:
            self.runs.append(run_id)
        return self.runs.index(run_id)

    def shape(self) -> tuple[int, int, int, int]:
        return len(self), self.rows.shape[1], len(self.horizons), len(self.quantiles)


# the `groups` columns decode_group reads (then `forecast, alpha` where values are read)
GROUP_COLUMNS = (
    "model, grp, horizons, quantiles, names, runs, n_fits, n_cols, keys, country, rows, origin, "
    "status, attempts, task, run, error"
)


def decode_group(row: tuple[Any, ...], values: bool, blobs: tuple[Any, Any]) -> GroupState:
    """A `groups` row (GROUP_COLUMNS) as a state; `values`: with its forecasts, from `blobs`."""
    model, grp, horizons, quantiles, names, runs, F, C = row[:8]
    keys, country, rows, origin, status, attempts, task, run, error = row[8:]
    H, Q = len(json.loads(horizons)), len(json.loads(quantiles))
    return GroupState(
        model=model,
        grp=int(grp),
        horizons=tuple(json.loads(horizons)),
        quantiles=tuple(json.loads(quantiles)),
        names=np.array(json.loads(names), dtype=object),
        keys=np.frombuffer(keys, dtype=np.uint8).reshape(F, KEY_BYTES),
        country=unpack(country, "<i4", (F, C)),
        rows=unpack(rows, "u1", (F, C)).astype(bool),
        origin=unpack(origin, "<i4", (F,)),
        status=unpack(status, "u1", (F,)),
        attempts=unpack(attempts, "<i4", (F,)),
        task=unpack(task, "<i8", (F,)),
        run=unpack(run, "<i4", (F,)),
        runs=list(json.loads(runs)),
        error=unpack(error, "<i8", (F,)),
        forecast=floats(blobs[0], (F, C, H, Q)) if values else None,
        alpha=floats(blobs[1], (F, Q)) if values else None,
    )


def group_row(s: GroupState) -> tuple[Any, ...]:
    """The `groups` row of a state; only the run ids its fits still name are kept."""
    F, C, _, _ = s.shape()
    if s.run.size and s.run.min() == s.run.max():  # one run (a fresh sync's): no sort
        used, run = s.run[:1], np.zeros(s.run.size, dtype=np.intp)
    else:
        used, run = np.unique(s.run, return_inverse=True)
    if used.size and used[0] < 0:  # -1 (no run) stays -1
        run = run - 1
        used = used[1:]
    runs = [s.runs[i] for i in used.tolist()]
    return (
        s.model,
        s.grp,
        json.dumps(list(s.horizons)),
        json.dumps(list(s.quantiles)),
        json.dumps([str(n) for n in s.names]),
        json.dumps(runs),
        F,
        C,
        raw_blob(s.keys, "u1"),
        pack(s.country.astype("<i4", copy=False)),
        pack(s.rows.astype("u1", copy=False)),
        pack(s.origin.astype("<i4", copy=False)),
        pack(s.status.astype("u1", copy=False)),
        pack(s.attempts.astype("<i4", copy=False)),
        pack(s.task.astype("<i8", copy=False)),
        pack(np.asarray(run, dtype="<i4").reshape(F)),
        pack(s.error.astype("<i8", copy=False)),
        None if s.forecast is None else float_blob(s.forecast),
        None if s.alpha is None else float_blob(s.alpha),
    )


def check_format(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version != FORMAT:
        raise OldFormat(f"store format {version}, this qpipe reads format {FORMAT}")
