"""The progress store's per-row view (one row per (model, country, quantile, horizon, origin):
ROW_COLUMNS) from its groups' states, and its parquet export: built in sorted Arrow chunks so
that a million fits never sit in memory as Python rows (progress_view.read_table reads it as a
frame, ProgressStore.export writes it as a file)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.io import atomic_path, column_encodings
from pipeline.runtime.fits.fit_rows import expand_rows
from pipeline.runtime.store.progress_format import STATUSES, GroupState

if TYPE_CHECKING:  # imported where a frame is made
    import pandas as pd

# the export's columns (the seed's one row per forecast), in order, and their types
ROW_COLUMNS = (
    "model", "country", "quantile", "horizon", "origin", "key", "status", "attempts",
    "error_type", "error_message", "worker", "started", "finished", "seconds", "peak_mb",
    "forecast", "alpha", "run_id",
)  # fmt: skip
FLOAT_COLUMNS = ("quantile", "started", "finished", "seconds", "peak_mb", "forecast", "alpha")
INT_COLUMNS = ("horizon", "attempts")
CHUNK_ROWS = 1 << 16


def rows_frame(
    states: Sequence[GroupState], tasks: pd.DataFrame, errors: pd.DataFrame
) -> pd.DataFrame:
    """The per (model, country, quantile, horizon, origin) table (ROW_COLUMNS), sorted by
    model, country, horizon, quantile, origin. `tasks`/`errors`: those tables, indexed by id."""
    import pyarrow as pa

    table = pa.concat_tables(list(row_chunks(states, tasks, errors)))
    return table.cast(row_schema()).to_pandas()  # the string columns decoded


def row_chunks(
    states: Sequence[GroupState],
    tasks: pd.DataFrame,
    errors: pd.DataFrame,
    chunk: int = CHUNK_ROWS,
) -> Iterator[Any]:
    """rows_frame in consecutive Arrow tables of at most `chunk` rows (write_schema: its
    string columns, but the keys, dictionary-encoded over the same values in every chunk): the
    sort runs on integer arrays, and each chunk's columns are filled group by group into numpy
    arrays in their final order (a string column its codes into its few distinct values, the
    keys' hex straight into an Arrow buffer): no Python object per row and no reordering of
    built tables."""
    states = [s for s in states if len(s)]
    if not states:
        yield _empty()
        return
    models = sorted({s.model for s in states})
    names = np.array(sorted({str(n) for s in states for n in s.names}), dtype=object)
    quantiles = np.unique(np.concatenate([np.asarray(s.quantiles, np.float64) for s in states]))
    horizons = np.unique(np.concatenate([np.asarray(s.horizons, np.int64) for s in states]))
    origins = np.unique(np.concatenate([np.asarray(s.origin, np.int64) for s in states]))
    # one int64 sort key per row (model, country, horizon, quantile, origin: each its rank),
    # groups one after another: a row is then its position, and the sort holds two int64 per
    # row instead of five columns and their (group, row) index
    sizes = [len(models), len(names), horizons.size, quantiles.size, origins.size]
    if float(np.prod([max(n, 1) for n in sizes], dtype=np.float64)) >= 2.0**62:
        raise ValueError(f"too many distinct (model, country, horizon, quantile, origin): {sizes}")
    keys, ranks = [], []
    for s in states:
        fi, cj, hi, qi = _expand(s)
        rank = np.searchsorted(names, s.names.astype(str).astype(object))
        ranks.append(rank)
        key = np.full(fi.size, models.index(s.model), dtype=np.int64)
        for values, n in (
            (rank[s.country[fi, cj]], names.size),
            (np.searchsorted(horizons, np.asarray(s.horizons, np.int64))[hi], horizons.size),
            (np.searchsorted(quantiles, np.asarray(s.quantiles, np.float64))[qi], quantiles.size),
            (np.searchsorted(origins, s.origin)[fi], origins.size),
        ):
            key *= n
            key += values
        keys.append(key)
        del fi, cj, hi, qi
    offsets = np.cumsum([0, *(k.size for k in keys)])
    order = np.argsort(np.concatenate(keys), kind="stable")
    del keys
    import pyarrow as pa

    from pipeline.runtime.fits.fit_rows import origin_labels

    # every string column's distinct values once per export; rows hold codes into them
    dictionaries = {
        c: pa.array(list(values), type=pa.string())
        for c, values in (
            ("model", models),
            ("country", names),
            ("origin", origin_labels(origins)),
            ("status", STATUSES),
            ("run_id", [r for s in states for r in s.runs] or [""]),
        )
    }
    run_offset = np.cumsum([0, *(len(s.runs) for s in states)])
    task_of = _Side(tasks, ("worker", "started", "finished", "seconds", "peak_mb"))
    error_of = _Side(errors, ("error_type", "message"))
    # per group, once per export rather than once per chunk: its existing (fit, row) pairs,
    # and each fit's rows in the side tables (-1: none)
    per_group = [
        (rank, np.nonzero(s.rows), task_of.rows(s.task), error_of.rows(s.error))
        for s, rank in zip(states, ranks, strict=True)
    ]
    for start in range(0, order.size, chunk):
        at = order[start : start + chunk]
        g = np.searchsorted(offsets, at, side="right") - 1
        yield _chunk(states, per_group, g, at - offsets[g], run_offset, origins)(
            dictionaries, task_of, error_of
        )


def _chunk(
    states: Sequence[GroupState],
    per_group: Sequence[tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray, np.ndarray]],
    g: np.ndarray,
    r: np.ndarray,
    run_offset: np.ndarray,
    origins: np.ndarray,
) -> Any:
    """The chunk's rows (group `g`, position `r` in _expand's order), filled group by group;
    returns a function of the string columns' dictionaries and the side tables that builds
    the Arrow table."""
    m = g.size
    code = {c: np.empty(m, np.int64) for c in ("model", "country", "origin", "status", "run_id")}
    num = {c: np.empty(m, np.float64) for c in ("quantile", "forecast", "alpha")}
    # horizon, attempts; task and error: each row's row in the side tables (-1: none)
    ints = {c: np.empty(m, np.int64) for c in ("horizon", "attempts", "task", "error")}
    raw = np.empty((m, 32), np.uint8)
    models = sorted({s.model for s in states})
    for gi in np.unique(g).tolist():
        sel = np.nonzero(g == gi)[0]
        s = states[gi]
        rank, (fr, cr), task_row, error_row = per_group[gi]
        _, _, H, Q = s.shape()
        # _expand's order: row r is forecast (r // (H Q)) of the group's (fit, row) pairs
        pair, hq = np.divmod(r[sel], H * Q)
        fi, cj = fr[pair], cr[pair]
        hi, qi = np.divmod(hq, Q)
        code["model"][sel] = models.index(s.model)
        code["country"][sel] = rank[s.country[fi, cj]]
        code["origin"][sel] = np.searchsorted(origins, s.origin[fi])
        code["status"][sel] = s.status[fi]
        run = s.run[fi].astype(np.int64)
        code["run_id"][sel] = np.where((run >= 0) & (run < len(s.runs)), run + run_offset[gi], -1)
        num["quantile"][sel] = np.asarray(s.quantiles, dtype=np.float64)[qi]
        ints["horizon"][sel] = np.asarray(s.horizons, dtype=np.int64)[hi]
        ints["attempts"][sel] = s.attempts[fi]
        ints["task"][sel] = task_row[fi]
        ints["error"][sel] = error_row[fi]
        if s.forecast is not None:
            num["forecast"][sel] = s.forecast[fi, cj, hi, qi]
            num["alpha"][sel] = s.alpha[fi, qi]  # type: ignore[index]
        else:
            num["forecast"][sel] = num["alpha"][sel] = np.nan
        raw[sel] = s.keys[fi]

    def build(dictionaries: dict[str, Any], tasks: _Side, errors: _Side) -> Any:
        import pyarrow as pa

        task, error = tasks.at(ints["task"]), errors.at(ints["error"])
        strings = {c: _coded(dictionaries[c], code[c]) for c in code}
        columns = {
            **strings,
            **num,
            "horizon": ints["horizon"],
            "key": _hex_column(raw),
            "attempts": ints["attempts"],
            "error_type": error["error_type"],
            "error_message": error["message"],
            **task,
        }
        for c in FLOAT_COLUMNS:  # NaN is null, as pandas writes it
            columns[c] = pa.array(columns[c], type=pa.float64(), from_pandas=True)
        return pa.table([columns[c] for c in ROW_COLUMNS], schema=write_schema())

    return build


def _hex_column(raw: np.ndarray) -> Any:
    """A string column of each row's 64-character hex key, straight from the bytes."""
    import pyarrow as pa

    n, width = raw.shape[0], 2 * raw.shape[1]
    data = np.ascontiguousarray(raw).tobytes().hex().encode("ascii")
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def row_schema() -> Any:
    """The export's Arrow schema: ROW_COLUMNS, floats, ints, the rest strings."""
    import pyarrow as pa

    types = {
        **dict.fromkeys(FLOAT_COLUMNS, pa.float64()),
        **dict.fromkeys(INT_COLUMNS, pa.int64()),
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in ROW_COLUMNS])


def write_schema() -> Any:
    """row_schema with its string columns but `key` dictionary-encoded: row_chunks' tables. The
    parquet writer then writes a chunk's dictionary and codes as they are, instead of hashing
    every string of the chunk to find them again."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(f.name, pa.dictionary(pa.int32(), f.type))
            if f.type == pa.string() and f.name != "key"
            else f
            for f in row_schema()
        ]
    )


# the export's parquet settings: the forecasts (unique doubles) and the keys (unique hex) are
# neither dictionary-encoded (pyarrow tries, then falls back after a page) nor given statistics;
# the forecasts are not compressed either (zstd saves under 5 % of random doubles). No Arrow
# schema is stored, so that a reader gets `string` columns, not the dictionaries written.
_UNIQUE = ("key", "forecast")
_WRITE_OPTIONS = {
    **column_encodings(ROW_COLUMNS, plain=_UNIQUE, uncompressed=["forecast"]),
    "write_statistics": [c for c in ROW_COLUMNS if c not in _UNIQUE],
    "store_schema": False,
}


def write_rows(path: Path, chunks: Iterator[Any]) -> None:
    """The per-row table as parquet (atomic), one row group per chunk: the export."""
    import pyarrow.parquet as pq

    with (
        atomic_path(path) as tmp,
        pq.ParquetWriter(tmp, write_schema(), **_WRITE_OPTIONS) as out,
    ):
        for chunk in chunks:
            out.write_table(chunk)


def _empty() -> Any:
    return write_schema().empty_table()


def _expand(s: GroupState) -> tuple[np.ndarray, ...]:
    """(fit, row, horizon index, quantile index) of every forecast row of the group, fit-major."""
    F, _, H, Q = s.shape()
    return expand_rows(s.rows, np.arange(F), H, Q)


def _coded(values: Any, codes: np.ndarray) -> Any:
    """A dictionary-encoded string column: `values` (an Arrow string array of a few distinct
    strings) at `codes`, null where a code is -1."""
    import pyarrow as pa

    valid = codes >= 0
    mask = None if valid.all() else ~valid
    at = pa.array(np.where(valid, codes, 0).astype(np.int32), mask=mask, type=pa.int32())
    return pa.DictionaryArray.from_arrays(at, values)


class _Side:
    """Columns of a side table (`tasks`, `errors`: indexed by id) looked up by id: floats as
    numpy, strings as codes into their sorted distinct values (ids 0 or without a row, and
    NULL cells: null / NaN)."""

    def __init__(self, table: pd.DataFrame, columns: Sequence[str]) -> None:
        import pandas as pd
        import pyarrow as pa

        ids = table.index.to_numpy(dtype=np.int64)
        self.row_of = np.full(int(ids.max(initial=0)) + 1, -1, dtype=np.int64)
        self.row_of[ids[ids >= 0]] = np.nonzero(ids >= 0)[0]
        self.columns: dict[str, Any] = {}
        for c in columns:
            col = table[c].to_numpy() if c in table else np.full(len(table), None)
            if c in FLOAT_COLUMNS:  # a column of NULLs reads as objects; NaN for row -1
                self.columns[c] = np.append(col.astype(np.float64), np.nan)
            else:  # a NULL cell reads null (code -1, as row -1 gets from the appended -1)
                strings = [None if v is None or v != v else str(v) for v in col]
                known = np.nonzero([v is not None for v in strings])[0]
                present = np.array([strings[i] for i in known.tolist()], dtype=object)
                codes, values = pd.factorize(present, sort=True)
                at = np.full(len(strings) + 1, -1, dtype=np.int64)
                at[known] = codes
                self.columns[c] = (at, pa.array(list(values) or [""], type=pa.string()))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The table's row of each id; -1 for 0 and ids without a row."""
        ids = np.asarray(ids, dtype=np.int64)
        known = (ids > 0) & (ids < self.row_of.size)
        return np.where(known, self.row_of[np.where(known, ids, 0)], -1)

    def at(self, row: np.ndarray) -> dict[str, Any]:
        """The columns at rows `row` (self.rows' values: -1 is null / NaN)."""
        out: dict[str, Any] = {}
        for c, col in self.columns.items():
            if c in FLOAT_COLUMNS:  # row -1 takes the NaN appended after the last row
                out[c] = col[row]
            else:  # ... and the code -1 (null)
                codes, values = col
                out[c] = _coded(values, codes[row])
        return out
