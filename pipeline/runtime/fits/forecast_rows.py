"""A model's forecast table (pipeline.schema) from its fit groups' predictions, built already
sorted and as Arrow tables of at most `chunk` rows (pure: numpy, pyarrow).

At a million fits the table has millions of rows. Built as a pandas frame of Python strings,
then copied, cast and sorted (schema.conform_forecasts), it held about a gigabyte at the end of
train. Here the sort runs on integer codes (country rank, horizon, quantile, origin); the
numeric columns are taken in that order; timestamps and strings (a take from the few distinct
values) are made one chunk at a time, so a chunk's strings are the only ones alive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.arrow_columns import from_numpy, strings
from pipeline.io import column_encodings
from pipeline.runtime.fits.fit_groups import FitGroup, expand
from pipeline.runtime.fits.fit_windows import country_grid
from pipeline.schema import FORECAST_COLUMNS, Y_RAW, forecast_arrow_schema

if TYPE_CHECKING:
    from pipeline.runtime.fits.fit_windows import Panel

CHUNK_ROWS = 1 << 16  # rows per Arrow table and parquet row group
# how train writes the table (pipeline.io.write_parquet_tables' options): the forecasts, all
# but unique doubles, neither dictionary-encoded (pyarrow tries, then falls back to plain
# after a page: 0.2 CPU-s per 3M rows for nothing) nor compressed (zstd saves under 5 % of
# them); the other columns, few distinct values each, keep both
TABLE_OPTIONS = column_encodings(FORECAST_COLUMNS, plain=["FORECAST"], uncompressed=["FORECAST"])


def forecast_chunks(
    groups: Sequence[FitGroup],
    pred: Sequence[np.ndarray],
    alpha: Sequence[np.ndarray],
    have: Sequence[np.ndarray],
    config: Any,
    model: str,
    panel: Panel,
    chunk: int = CHUNK_ROWS,
) -> Iterator[Any]:
    """The forecast table of the fits marked in `have` (per group, (F,) bool), with per group
    `pred` (F, C, H, Q) and `alpha` (F, Q), as consecutive Arrow tables (forecast_arrow_schema)
    in FORECAST_SORT order. ACTUAL is y_raw at (COUNTRY, TIME) from `panel`."""
    import pyarrow as pa

    qs = np.asarray(config.data.quantiles, dtype=np.float64)
    Q = len(qs)
    coded = [g.country_codes() for g in groups]
    names = _names([found for found, _ in coded])
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("c", "h", "q", "o", "f", "a")}
    for gi, g in enumerate(groups):
        fi, cj, hi, qi = expand(g, np.nonzero(have[gi])[0], Q)
        uniques, codes = coded[gi]
        rank = np.searchsorted(names, uniques)
        C = g.countries.shape[1]
        cols["c"].append(rank[codes[fi * C + cj]].astype(np.int32))
        cols["h"].append(np.asarray(g.horizons, dtype=np.int64)[hi])
        cols["q"].append(qi.astype(np.int16))
        cols["o"].append(g.origin[fi].astype(np.int64))
        cols["f"].append(pred[gi][fi, cj, hi, qi].astype(np.float64, copy=False))
        cols["a"].append(alpha[gi][fi, qi].astype(np.float64, copy=False))
        del fi, cj, hi, qi
    flat = {
        k: np.concatenate(cols.pop(k)) if groups else np.array([], np.int64) for k in list(cols)
    }
    # FORECAST_SORT: MODEL (one here), COUNTRY, HORIZON, QUANTILE, WINDOW_END (the origin);
    # stable, as conform_forecasts sorts (the keys are unique per row anyway)
    qrank = np.argsort(np.argsort(qs, kind="stable"), kind="stable")
    order = _sort_order(flat["c"], flat["h"], qrank[flat["q"]], flat["o"])
    for k in flat:
        flat[k] = flat[k][order]
    del order
    actual = _actuals(panel, names, flat["c"], flat["o"] + flat["h"])
    schema = forecast_arrow_schema()
    size = config.rolling_window.size
    n = flat["c"].size
    for start in range(0, max(n, 1), chunk):
        s = slice(start, start + chunk)
        origin = flat["o"][s]
        m = origin.size
        columns = {
            "TIME": _stamps(origin + flat["h"][s]),
            "COUNTRY": _coded(names, flat["c"][s]),
            "TARGET": _coded([config.data.target], np.zeros(m, np.int32)),
            "MODEL": _coded([model], np.zeros(m, np.int32)),
            "QUANTILE": from_numpy(qs[flat["q"][s]], nan_is_null=True),
            "HORIZON": from_numpy(flat["h"][s]),
            "WINDOW_START": _stamps(origin - size + 1),
            "WINDOW_END": _stamps(origin),
            "FORECAST": from_numpy(flat["f"][s], nan_is_null=True),  # NaN is null, as pandas writes
            "ACTUAL": from_numpy(actual[s], nan_is_null=True),
            "ALPHA": from_numpy(flat["a"][s], nan_is_null=True),
        }
        yield pa.Table.from_arrays([columns[c] for c in FORECAST_COLUMNS], schema=schema)


def _sort_order(*columns: np.ndarray) -> np.ndarray:
    """np.lexsort of integer columns, most significant first, as one int64 key per row and a
    stable argsort (the rows come in long sorted runs, which a stable sort merges in about half
    lexsort's time); lexsort itself when the ranks do not fit 63 bits."""
    if not columns[0].size:
        return np.zeros(0, dtype=np.int64)
    key = np.zeros(columns[0].size, dtype=np.int64)
    bits = 0.0
    for col in columns:
        lo, hi = int(col.min()), int(col.max())
        span = hi - lo + 1
        bits += np.log2(span)
        if bits >= 62:
            return np.lexsort(columns[::-1])
        key *= span
        key += col - lo
    return np.argsort(key, kind="stable")


def _names(per_group: Sequence[np.ndarray]) -> np.ndarray:
    """Every forecast-row country of the groups (each group's distinct ones), sorted (the order
    of COUNTRY in the sort)."""
    seen: set[str] = set()
    for found in per_group:
        seen.update(str(c) for c in found)
    return np.array(sorted(seen), dtype=object)


def _actuals(panel: Panel, names: np.ndarray, country: np.ndarray, month: np.ndarray) -> np.ndarray:
    """y_raw of the panel at (names[country], month index), NaN where the panel has no row."""
    if not country.size or not len(panel):
        return np.full(country.size, np.nan)
    panel_names, m0, grid = country_grid(panel, [Y_RAW])
    known = np.array(panel_names, dtype=object)
    at = np.searchsorted(known, names)
    found = (at < known.size) & (known[np.minimum(at, known.size - 1)] == names)
    # one row per name, a NaN column on either side of the panel's months (months outside
    # it clip to them): one flat take per forecast row, no masks over the rows
    width = grid.shape[1] + 2
    padded = np.full((names.size, width), np.nan)
    padded[np.nonzero(found)[0], 1:-1] = grid[at[found], :, 0]
    at_row = month - (m0 - 1)  # a new array (np.clip is several times slower)
    np.maximum(at_row, 0, out=at_row)
    np.minimum(at_row, width - 1, out=at_row)
    at_row += country.astype(np.int64) * width
    return padded.ravel().take(at_row)


def _stamps(months: np.ndarray) -> Any:
    """timestamp[ns] of month indexes (schema.month_start without a pandas index): each
    distinct month converted once, the rows taken from those few stamps."""
    import pyarrow as pa

    from pipeline.schema import month_index

    months = np.asarray(months, np.int64)
    if not months.size:
        return from_numpy(months.astype("datetime64[ns]"), pa.timestamp("ns"))
    lo = int(months.min())
    span = np.arange(lo, int(months.max()) + 1, dtype=np.int64) - month_index("1970-01-01")
    stamps = span.astype("datetime64[M]").astype("datetime64[ns]")[months - lo]
    return from_numpy(stamps, pa.timestamp("ns"))


def _coded(values: Sequence[str] | np.ndarray, codes: np.ndarray) -> Any:
    """A large_string column: `values` (a few distinct strings) at `codes`."""
    return strings([str(v) for v in values], large=True).take(from_numpy(np.asarray(codes)))
