"""The forecast table's columns that are not the forecasts themselves, made per chunk from its
integer codes (pure: numpy, pyarrow): the actuals looked up in the panel's grid, the three
timestamps of month indexes, and the string columns of few distinct values.

They are made once per chunk of 65,536 rows, 46 chunks per million rw fits, so each is a few
numpy passes over the chunk's codes, with what does not depend on the chunk (the panel's
grid, the months' timestamps, the strings' bytes) made once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.arrow_columns import from_numpy, strings
from pipeline.runtime.fits.fit_windows import country_grid
from pipeline.schema import Y_RAW

if TYPE_CHECKING:
    from pipeline.runtime.fits.fit_windows import Panel

# above one run of a string per this many rows, a chunk's strings are taken per row
_ROWS_PER_RUN = 16


class Actuals:
    """y_raw of the panel at (names[country], month index), NaN where the panel has no row:
    the panel's grid made once, looked up per block."""

    def __init__(self, panel: Panel, names: np.ndarray) -> None:
        self.padded: np.ndarray | None = None
        if not names.size or not len(panel):
            return
        panel_names, self.m0, grid = country_grid(panel, [Y_RAW])
        known = np.array(panel_names, dtype=object)
        at = np.searchsorted(known, names)
        found = (at < known.size) & (known[np.minimum(at, known.size - 1)] == names)
        # one row per name, a NaN column on either side of the panel's months (months outside
        # it clip to them): one flat take per forecast row, no masks over the rows
        self.width = grid.shape[1] + 2
        self.padded = np.full((names.size, self.width), np.nan)
        self.padded[np.nonzero(found)[0], 1:-1] = grid[at[found], :, 0]

    def __call__(self, country: np.ndarray, month: np.ndarray) -> np.ndarray:
        if self.padded is None or not country.size:
            return np.full(country.size, np.nan)
        at_row = month - (self.m0 - 1)  # a new array (np.clip is several times slower)
        np.maximum(at_row, 0, out=at_row)
        np.minimum(at_row, self.width - 1, out=at_row)
        at_row += country.astype(np.int64) * self.width
        return self.padded.ravel().take(at_row)


class Stamps:
    """timestamp[ns] columns of month indexes (schema.month_start without a pandas index):
    the months' stamps made once for the span seen so far (a few hundred months), a chunk's
    column taken from them; no NaT can occur, so no null check per row."""

    def __init__(self) -> None:
        self.lo, self.ns = 0, np.zeros(0, dtype=np.int64)

    def __call__(self, months: np.ndarray) -> Any:
        import pyarrow as pa

        months = np.asarray(months, np.int64)
        kind = pa.timestamp("ns")
        if not months.size:
            return from_numpy(months.astype("datetime64[ns]"), kind)
        lo, hi = int(months.min()), int(months.max())
        if lo < self.lo or hi >= self.lo + self.ns.size:
            self._span(lo, hi)
        values = self.ns.take(months - self.lo)
        return pa.Array.from_buffers(kind, values.size, [None, pa.py_buffer(values)], 0)

    def windows(self, origin: np.ndarray, horizon: np.ndarray, size: int) -> tuple[Any, ...]:
        """TIME, WINDOW_START and WINDOW_END of rows of `origin` and `horizon` with windows of
        `size` months: three takes at one index (three calls would make three indexes, each
        with its own passes over the rows for its range)."""
        import pyarrow as pa

        origin, horizon = np.asarray(origin, np.int64), np.asarray(horizon, np.int64)
        if not origin.size or size < 1 or int(horizon.min()) < 0:  # not a study's: per call
            return self(origin + horizon), self(origin - size + 1), self(origin)
        lo, hi = int(origin.min()) - size + 1, int(origin.max()) + int(horizon.max())
        if lo < self.lo or hi >= self.lo + self.ns.size:
            self._span(lo, hi)
        start = origin - (self.lo + size - 1)  # WINDOW_START's place in the stamps
        ends = self.ns[size - 1 :]  # ends[i]: the stamp size - 1 months after ns[i]'s
        kind = pa.timestamp("ns")
        made = [ends.take(start + horizon), self.ns.take(start), ends.take(start)]
        return tuple(pa.Array.from_buffers(kind, v.size, [None, pa.py_buffer(v)], 0) for v in made)

    def _span(self, lo: int, hi: int) -> None:
        from pipeline.schema import month_index

        if self.ns.size:
            lo, hi = min(lo, self.lo), max(hi, self.lo + self.ns.size - 1)
        span = np.arange(lo, hi + 1, dtype=np.int64) - month_index("1970-01-01")
        self.lo = lo
        self.ns = span.astype("datetime64[M]").astype("datetime64[ns]").view(np.int64)


class Strings:
    """A large_string column's few distinct values, made once; `take` gives a chunk's column
    of them at its codes, `constant` one of the first value in every row (the last such
    column kept: every chunk but the last has the same length)."""

    def __init__(self, values: Sequence[str] | np.ndarray) -> None:
        self.values = strings([str(v) for v in values], large=True)
        self.encoded = [str(v).encode() for v in values]
        self.lengths = np.array([len(b) for b in self.encoded], dtype=np.int64)
        self._constant: tuple[int, bool, Any] | None = None

    def take(self, codes: np.ndarray) -> Any:
        """The values at `codes`: COUNTRY leads the table's sort, so a chunk's codes are a
        few runs, and its offsets and bytes are made per run (pyarrow's take goes per row)."""
        import pyarrow as pa

        codes = np.asarray(codes)
        m = codes.size
        starts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        if not m or starts.size * _ROWS_PER_RUN > m:
            return self.values.take(from_numpy(codes))
        starts = np.r_[0, starts]
        counts = np.diff(np.r_[starts, m])
        runs = codes[starts].tolist()
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.repeat(self.lengths[runs], counts), out=offsets[1:])
        data = b"".join(self.encoded[k] * n for k, n in zip(runs, counts.tolist(), strict=True))
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        return pa.Array.from_buffers(pa.large_string(), m, buffers, 0)

    def constant(self, m: int, encoded: bool = False) -> Any:
        """The first value in each of `m` rows; `encoded`: as a dictionary array of it (an
        empty dictionary for no rows, as the parquet writer's own would be), which
        pipeline.io.write_parquet_tables writes without hashing every row's string."""
        import pyarrow as pa

        if self._constant is None or self._constant[:2] != (m, encoded):
            if encoded:
                zeros = pa.py_buffer(np.zeros(m, np.int32))
                indices = pa.Array.from_buffers(pa.int32(), m, [None, zeros], 0)
                one = self.values.slice(0, min(m, 1))
                column = pa.DictionaryArray.from_arrays(indices, one)
            else:
                column = self.take(np.zeros(m, np.int32))
            self._constant = (m, encoded, column)
        return self._constant[2]
