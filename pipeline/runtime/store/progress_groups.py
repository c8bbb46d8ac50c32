"""The progress store's fit groups in memory: a group's state made from the plan (every fit
pending) or carried over from an old one, changed by one event per task transition, and read
back from the store (the `groups` snapshot with the `events` since applied in id order). How
a state is laid out in the store's tables is progress_format.py's."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pipeline.runtime.fits.fit_windows import positions
from pipeline.runtime.fits.keys import KEY_BYTES
from pipeline.runtime.store.progress_format import (
    DONE,
    GROUP_COLUMNS,
    PENDING,
    STATUSES,
    GroupState,
    check_format,
    decode_group,
    floats,
    unpack,
    unpack_index,
)

if TYPE_CHECKING:
    from pipeline.runtime.fits.fit_groups import FitGroup

# --- a group's state, made and changed ------------------------------------------------------------


def fresh_state(model: str, grp: int, g: FitGroup, quantiles: Sequence[float]) -> GroupState:
    """A group's state with every fit pending. No forecast is known: `forecast` and `alpha`
    are None (what group_row writes for all-NaN ones: NULL), made by carry_state only where
    an old state's values carry over (at 1M fits, 100 MB of NaN filled and then scanned)."""
    F, C = len(g), g.rows.shape[1]
    names, country = g.country_codes()
    return GroupState(
        model=model,
        grp=grp,
        horizons=tuple(int(h) for h in g.horizons),
        quantiles=tuple(float(q) for q in quantiles),
        names=names.astype(object),
        keys=g.key_bytes().view(np.uint8).reshape(F, KEY_BYTES),
        country=country.reshape(F, C).astype(np.int32),
        rows=np.asarray(g.rows, dtype=bool),
        origin=np.asarray(g.origin, dtype=np.int32),
        status=np.full(F, PENDING, dtype=np.uint8),
        attempts=np.zeros(F, dtype=np.int32),
        task=np.zeros(F, dtype=np.int64),
        run=np.full(F, -1, dtype=np.int32),
        runs=[],
        error=np.zeros(F, dtype=np.int64),
        forecast=None,
        alpha=None,
    )


def carry_state(
    new: GroupState, at: np.ndarray, old: GroupState, src: np.ndarray, run_id: str
) -> None:
    """Fits `at` of `new` are fits `src` of `old` (same keys): their state carries over."""
    for name in ("status", "attempts", "task", "error"):
        getattr(new, name)[at] = getattr(old, name)[src]
    runs = np.array([new.run_index(r) for r in old.runs] + [new.run_index(run_id)], np.int32)
    new.run[at] = runs[old.run[src]]  # -1 (none) picks the last: this run
    F, C, H, Q = new.shape()
    if old.forecast is not None and old.forecast.shape[1:] == (C, H, Q):
        if new.forecast is None or new.alpha is None:  # a fresh state's: all NaN so far
            new.forecast, new.alpha = np.full((F, C, H, Q), np.nan), np.full((F, Q), np.nan)
        new.forecast[at] = old.forecast[src]
        new.alpha[at] = old.alpha[src]  # type: ignore[index]


def mirror_state(states: Sequence[GroupState]) -> list[GroupState]:
    """The writer's in-memory copy: statuses, attempts and runs (no forecasts)."""
    return [replace(s, forecast=None, alpha=None, runs=list(s.runs)) for s in states]


def apply_event(
    state: GroupState,
    status: str,
    fits: bytes,
    run_id: str,
    task: int | None,
    bump: int,
    error: bytes | None,
    forecast: bytes | None,
    alpha: bytes | None,
) -> np.ndarray:
    """Apply one event to `state` (the reader's and the writer's one definition); its fits."""
    idx = unpack_index(fits)
    apply_fits(state, status, idx, run_id, task, bump, error, forecast, alpha)
    return idx


def apply_fits(
    state: GroupState,
    status: str,
    idx: np.ndarray,
    run_id: str,
    task: int | None,
    bump: int,
    error: bytes | memoryview | None,
    forecast: bytes | memoryview | None,
    alpha: bytes | memoryview | None,
) -> None:
    """apply_event of an event whose fits `idx` are decoded already (the writer's, which
    made the event from them)."""
    code, n = STATUSES.index(status), idx.size
    at = positions(idx)  # a run of fits (a task's, mostly): assigned as a slice
    state.status[at] = code
    if bump:
        state.attempts[at] += int(bump)
    if task is not None:
        state.task[at] = task
    state.run[at] = state.run_index(run_id)
    if code == DONE:
        state.error[at] = 0
    if error is not None:
        state.error[at] = np.frombuffer(error, dtype="<i8")
    _, C, H, Q = state.shape()
    if state.forecast is not None and forecast is not None:
        state.forecast[at] = np.frombuffer(forecast, dtype="<f8").reshape(n, C, H, Q)
    if state.alpha is not None and code == DONE:
        state.alpha[at] = floats(alpha, (n, Q))


# --- reading the store: snapshots plus events -----------------------------------------------------


@contextmanager
def _read(conn: sqlite3.Connection, model: str | None) -> Iterator[tuple[str, tuple[str, ...]]]:
    """One read transaction (unless the caller holds one: a consistent state while the driver
    writes) over a store of this format (check_format); yields the WHERE clause and
    arguments for `model`."""
    check_format(conn)
    in_tx = conn.in_transaction
    if not in_tx:
        conn.execute("BEGIN")
    try:
        yield ("WHERE model = ?", (model,)) if model is not None else ("", ())
    finally:
        if not in_tx:
            conn.execute("COMMIT")


def load_groups(
    conn: sqlite3.Connection, model: str | None = None, values: bool = True
) -> list[GroupState]:
    """Every group (of `model`) with the events since its snapshot applied, in one read
    transaction (a consistent state while the driver writes). `values=False` skips the
    forecasts (what the monitor needs is statuses)."""
    extra = ", forecast, alpha" if values else ""
    with _read(conn, model) as (where, args):
        states = [
            decode_group(row[:17], values, tuple(row[17:]) if values else (None, None))
            for row in conn.execute(
                f"SELECT {GROUP_COLUMNS}{extra} FROM groups {where} ORDER BY model, grp", args
            )
        ]
        by = {(s.model, s.grp): s for s in states}
        cols = "model, grp, status, fits, run_id, task, bump, error" + extra
        for row in conn.execute(f"SELECT {cols} FROM events {where} ORDER BY id", args):
            state = by.get((row[0], row[1]))
            if state is not None:
                apply_event(state, *row[2:8], *(row[8:10] if values else (None, None)))
    return states


def load_statuses(
    conn: sqlite3.Connection, model: str | None = None
) -> list[tuple[str, np.ndarray]]:
    """(model, status per fit) of every group (of `model`), what load_groups gives for
    statuses, reading no other column: counting a 10M-fit store's statuses this way reads
    10 MB, not the fits' keys, countries and origins (about 700 MB)."""
    with _read(conn, model) as (where, args):
        by = {
            (m, grp): unpack(status, "u1", (F,))
            for m, grp, F, status in conn.execute(
                f"SELECT model, grp, n_fits, status FROM groups {where} ORDER BY model, grp", args
            )
        }
        for m, grp, status, fits in conn.execute(
            f"SELECT model, grp, status, fits FROM events {where} ORDER BY id", args
        ):
            if (m, grp) in by:  # as apply_event sets them
                by[m, grp][unpack_index(fits)] = STATUSES.index(status)
    return [(m, status) for (m, _), status in by.items()]
