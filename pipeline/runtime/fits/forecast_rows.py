"""A model's forecast table (pipeline.schema) from its fit groups' predictions, built already
sorted and as Arrow tables of at most `chunk` rows (pure: numpy, pyarrow).

At a million fits the table has millions of rows. Built as a pandas frame of Python strings,
then copied, cast and sorted (schema.conform_forecasts), it held about a gigabyte at the end of
train. Here each row is written at its sorted place (country rank, horizon, quantile, origin),
which follows from its group, country and fit when every horizon is in one group and a
country's fits come in origin order (the plan builds them so): no argsort; otherwise the rows
are sorted on those integer codes. Timestamps, strings and actuals are made one chunk (or
block) at a time from the rows' codes (forecast_columns.py), so a chunk's strings are the
only ones alive. The flat numeric columns (about 60 bytes per row while sorted: 190 per rw
fit, 1.9 GB at 10M fits) are made for one block of countries at a time: COUNTRY leads the
sort, so the blocks in rank order are the sorted table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.arrow_columns import from_numpy
from pipeline.io import column_encodings
from pipeline.runtime.fits.fit_groups import FitGroup
from pipeline.runtime.fits.forecast_columns import Actuals, Stamps, Strings
from pipeline.runtime.fits.kept_forecasts import KeptForecasts
from pipeline.schema import FORECAST_COLUMNS, forecast_arrow_schema

if TYPE_CHECKING:
    from pipeline.runtime.fits.fit_windows import Panel

CHUNK_ROWS = 1 << 16  # rows per Arrow table and parquet row group
# forecast rows built at once (a block of countries): about 60 bytes each while built
BLOCK_ROWS = 1 << 19
# how train writes the table (pipeline.io.write_parquet_tables' options), measured on rw 1M's
# 3M rows (benchmarks/README.md, "The train table's driver cost"): a dictionary only for the
# columns of a few distinct values (the stamps' ~230 each pay more to encode than they save);
# FORECAST, all but unique doubles, uncompressed (zstd saves under 5 % of it); min/max
# statistics only for the sort's keys that vary (COUNTRY leads the sort, then HORIZON,
# QUANTILE and the origin, so TIME's range): a reader skips row groups on those, the others'
# statistics only cost; LZ4 (raw), not zstd: 2 % more bytes, a fifth less CPU to write and
# 40 % less to read. 0.37 -> 0.24 CPU-s per 1M fits for the same values and row groups.
DICTIONARY = ["COUNTRY", "TARGET", "MODEL", "QUANTILE", "HORIZON"]
STATISTICS = ["COUNTRY", "HORIZON", "QUANTILE", "TIME"]
TABLE_OPTIONS = column_encodings(
    FORECAST_COLUMNS,
    plain=[c for c in FORECAST_COLUMNS if c not in DICTIONARY],
    uncompressed=["FORECAST"],
    statistics=STATISTICS,
    codec="lz4_raw",
)

# the columns of one value in every row, made as dictionary arrays of it for train's write
# (table_chunks(encoded=True), written_schema()): pyarrow then hashes no string per row
ENCODED = ("TARGET", "MODEL")


def written_schema() -> Any:
    """forecast_arrow_schema with the ENCODED columns as dictionary fields: the chunks'
    schema with `encoded`, which pipeline.io.write_parquet_tables stores as the plain one."""
    import pyarrow as pa

    schema = forecast_arrow_schema()
    for name in ENCODED:
        at = schema.get_field_index(name)
        kind = pa.dictionary(pa.int32(), schema.field(at).type)
        schema = schema.set(at, schema.field(at).with_type(kind))
    return schema


def forecast_chunks(
    groups: Sequence[FitGroup],
    pred: Sequence[np.ndarray],
    alpha: Sequence[np.ndarray],
    have: Sequence[np.ndarray],
    config: Any,
    model: str,
    panel: Panel,
    chunk: int = CHUNK_ROWS,
    block_rows: int = BLOCK_ROWS,
) -> Iterator[Any]:
    """table_chunks of forecasts given as per group arrays of every fit: the fits marked in
    `have` (per group, (F,) bool), with per group `pred` (F, C, H, Q) and `alpha` (F, Q)."""
    kept = KeptForecasts.of_arrays(pred, alpha, have)
    return table_chunks(groups, kept, config, model, panel, chunk, block_rows)


def table_chunks(
    groups: Sequence[FitGroup],
    kept: KeptForecasts,
    config: Any,
    model: str,
    panel: Panel,
    chunk: int = CHUNK_ROWS,
    block_rows: int = BLOCK_ROWS,
    encoded: bool = False,
) -> Iterator[Any]:
    """The forecast table of the fits `kept` knows, as consecutive Arrow tables of `chunk`
    rows (the last shorter; one empty table when no fit is known; forecast_arrow_schema) in
    FORECAST_SORT order. ACTUAL is y_raw at (COUNTRY, TIME) from `panel`. `encoded`: the
    ENCODED columns as dictionary arrays of their one value (written_schema()), which
    pipeline.io.write_parquet_tables writes as the same file for 0.05 CPU-s less per 1M rw fits.

    The rows are built in blocks of countries (about `block_rows` rows each, one country at
    least): COUNTRY leads the sort, so each block sorted alone is a run of the whole sorted
    table, and only one block's flat columns exist at a time (they were about 190 bytes per
    fit at once, most of train's driver peak at 10M fits)."""
    import pyarrow as pa

    qs = np.asarray(config.data.quantiles, dtype=np.float64)
    schema = written_schema() if encoded else forecast_arrow_schema()
    size = config.rolling_window.size

    def table(cols: dict[str, np.ndarray]) -> Any:
        origin, h = cols["o"], cols["h"]
        m = origin.size
        time, start, end = stamps.windows(origin, h, size)
        columns = {
            "TIME": time,
            "COUNTRY": country.take(cols["c"]),
            "TARGET": target.constant(m, encoded),
            "MODEL": model_name.constant(m, encoded),
            "QUANTILE": from_numpy(qs.take(cols["q"])),  # levels in (0, 1): no NaN to null
            "HORIZON": from_numpy(h),
            "WINDOW_START": start,
            "WINDOW_END": end,
            "FORECAST": from_numpy(cols["f"], nan_is_null=True),  # NaN is null, as pandas writes
            "ACTUAL": from_numpy(cols["actual"], nan_is_null=True),
            "ALPHA": from_numpy(cols["a"], nan_is_null=True),
        }
        return pa.Table.from_arrays([columns[c] for c in FORECAST_COLUMNS], schema=schema)

    rows = _RowsByCountry(groups, kept.have, len(qs))
    names = rows.names
    # the string columns' distinct values made once, not once per chunk (1,100 countries x
    # 46 chunks at rw 1M); TARGET and MODEL are one value in every row of a full chunk
    country, target, model_name = Strings(names), Strings([config.data.target]), Strings([model])
    stamps = Stamps()
    blocks = _sorted_blocks(rows, kept, qs, Actuals(panel, names), block_rows)
    yield from (table(cols) for cols in _rechunk(blocks, chunk))


class _RowsByCountry:
    """The known fits' (fit, row) pairs of every group, ordered by their country's rank in
    `names` (stable): a block of countries is then one slice per group. 12 bytes per pair
    (a per-country fit has one), against the flat columns' ~60 bytes per forecast row."""

    def __init__(self, groups: Sequence[FitGroup], have: Sequence[np.ndarray], Q: int) -> None:
        coded = [g.country_codes() for g in groups]
        self.names = _names([found for found, _ in coded])
        self.groups, self.Q = groups, Q
        self.fit: list[np.ndarray] = []  # (pairs,) int32: the fit, a position in its group
        self.col: list[np.ndarray] = []  # (pairs,) int32: its forecast row (the country column)
        self.rank: list[np.ndarray] = []  # (pairs,) int32: its country's rank, non-decreasing
        self.per_rank = np.zeros(self.names.size, dtype=np.int64)  # forecast rows per country
        for gi, g in enumerate(groups):
            fits = np.flatnonzero(have[gi])
            uniques, codes = coded[gi]
            C = g.countries.shape[1]
            if C == 1:  # a per-country fit has one forecast row (there unless masked)
                fi = fits if g.rows[fits, 0].all() else fits[g.rows[fits, 0]]
                cj, at = np.zeros(fi.size, dtype=np.int64), fi
            else:
                fr, cj = np.nonzero(g.rows[fits])
                fi = fits[fr]
                at = fi * C + cj
            rank = np.searchsorted(self.names, uniques).astype(np.int32)[codes[at]]
            if rank.size and np.any(rank[1:] < rank[:-1]):  # pooled fits: every country each
                order = np.argsort(rank, kind="stable")
                fi, cj, rank = fi[order], cj[order], rank[order]
            self.fit.append(fi.astype(np.int32))
            self.col.append(cj.astype(np.int32))
            self.rank.append(rank)
            self.per_rank += np.bincount(rank, minlength=self.names.size) * len(g.horizons) * Q
        self.slots = _slots(groups, self.rank, self.fit)

    def cuts(self, block_rows: int) -> np.ndarray:
        """Rank boundaries of blocks of about `block_rows` rows (a country's rows never split)."""
        ends = np.cumsum(self.per_rank)
        if not ends.size:
            return np.zeros(1, dtype=np.int64)
        marks = np.arange(block_rows, int(ends[-1]), max(block_rows, 1))
        inner = np.unique(np.searchsorted(ends, marks, side="left") + 1)
        inner = inner[inner < self.names.size]
        return np.r_[0, inner, self.names.size].astype(np.int64)

    def block(self, gi: int, lo: int, hi: int) -> tuple[np.ndarray, ...]:
        """Group `gi`'s forecasts of the countries ranked lo..hi-1: the rank of each and index
        arrays (fit, row, horizon index, quantile index), as `expand` orders them per country."""
        rank = self.rank[gi]
        a, b = np.searchsorted(rank, [lo, hi])
        H = len(self.groups[gi].horizons)
        hq, n = H * self.Q, int(b - a)
        return (
            np.repeat(rank[a:b], hq),
            np.repeat(self.fit[gi][a:b].astype(np.int64), hq),
            np.repeat(self.col[gi][a:b].astype(np.int64), hq),
            np.tile(np.repeat(np.arange(H), self.Q), n),
            np.tile(np.arange(self.Q), n * H),
        )


def _sorted_blocks(
    rows: _RowsByCountry,
    kept: KeptForecasts,
    qs: np.ndarray,
    actuals: Actuals,
    block_rows: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The flat columns of each block of countries, sorted: c (country rank), h, q (quantile
    index), o (origin), f, a, actual."""
    # FORECAST_SORT: MODEL (one here), COUNTRY, HORIZON, QUANTILE, WINDOW_END (the origin);
    # stable, as conform_forecasts sorts (the keys are unique per row anyway)
    qrank = np.argsort(np.argsort(qs, kind="stable"), kind="stable")
    cuts = rows.cuts(block_rows)
    for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        if rows.slots is not None:  # every row's place known: no sort
            placed = _placed_block(rows, kept, qrank, actuals, lo, hi)
            if placed is not None:
                yield placed
            continue
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("c", "h", "q", "o", "f", "a")}
        for gi, g in enumerate(rows.groups):
            c, fi, cj, hi_, qi = rows.block(gi, lo, hi)
            if not c.size:
                continue
            # each pair's H x Q forecasts in (horizon, quantile) order, as `block` expands it
            pairs = slice(None, None, len(g.horizons) * rows.Q)
            p, a = kept.take(gi, fi[pairs], cj[pairs])
            cols["c"].append(c)
            cols["h"].append(np.asarray(g.horizons, dtype=np.int64)[hi_])
            cols["q"].append(qi.astype(np.int16))
            cols["o"].append(g.origin[fi].astype(np.int64))
            cols["f"].append(p.reshape(-1))
            cols["a"].append(np.broadcast_to(a[:, None, :], p.shape).reshape(-1))
            del fi, cj, hi_, qi, p, a
        if not cols["c"]:
            continue
        flat = {k: np.concatenate(cols.pop(k)) for k in list(cols)}
        order = _sort_order(flat["c"], flat["h"], qrank[flat["q"]], flat["o"])
        for k in flat:
            flat[k] = flat[k][order]
        del order
        flat["actual"] = actuals(flat["c"], flat["o"] + flat["h"])
        yield flat


def _slots(
    groups: Sequence[FitGroup], rank: Sequence[np.ndarray], fit: Sequence[np.ndarray]
) -> list[tuple[int, int]] | None:
    """The (group, horizon index) of every horizon in FORECAST_SORT's order, when each row's
    sorted place follows from its group, country and fit alone: every horizon in one group
    only, and each group's fits of a country in strictly increasing origin order (the plan
    builds them so). Then a country's rows are its horizons' runs in turn, each a
    (quantile, fit) transpose of the fits' (fit, quantile) forecasts. None otherwise (the
    rows are sorted instead)."""
    slots = sorted(
        (int(h), gi, hj) for gi, g in enumerate(groups) for hj, h in enumerate(g.horizons)
    )
    if len({h for h, _, _ in slots}) != len(slots):
        return None
    for g, r, f in zip(groups, rank, fit, strict=True):
        o = np.asarray(g.origin)[f]
        if np.any((r[1:] == r[:-1]) & (o[1:] <= o[:-1])):
            return None
    return [(gi, hj) for _, gi, hj in slots]


def _placed_block(
    rows: _RowsByCountry,
    kept: KeptForecasts,
    qrank: np.ndarray,
    actuals: Actuals,
    lo: int,
    hi: int,
) -> dict[str, np.ndarray] | None:
    """The flat columns of the countries ranked lo..hi-1, each row written at its sorted place
    (rows.slots: COUNTRY, then the horizons in turn, then QUANTILE, then the fits in their
    origin order): the rows a stable sort of them gives (their sort keys are unique), in that
    order; None when the block has no rows. c, h and q are runs of one value each, made as
    runs; o, f, a and actual are each fit's values scattered to their places (the actual
    looked up once per fit and horizon, not once per quantile)."""
    Q, G, R = rows.Q, len(rows.groups), hi - lo
    spans = [np.searchsorted(r, [lo, hi]) for r in rows.rank]
    n = np.zeros((R, G), dtype=np.int64)  # fits per (country, group)
    for gi, (a, b) in enumerate(spans):
        n[:, gi] = np.bincount(rows.rank[gi][a:b] - lo, minlength=R)
    fits = n[:, [gi for gi, _ in rows.slots]]  # (R, slots): the fits of each horizon run
    per_slot = Q * fits
    run_start = np.cumsum(per_slot, axis=1) - per_slot  # within the country
    per_country = per_slot.sum(axis=1)
    country_start = np.cumsum(per_country) - per_country
    total = int(per_country.sum())
    if not total:
        return None
    horizon = np.array([rows.groups[gi].horizons[hj] for gi, hj in rows.slots], dtype=np.int64)
    by_rank = np.argsort(qrank, kind="stable")  # the quantile index at each rank
    out = {
        "c": np.repeat(np.arange(lo, hi, dtype=np.int32), per_country),
        "h": np.repeat(np.tile(horizon, R), per_slot.ravel()),
        "q": np.repeat(np.tile(by_rank.astype(np.int16), fits.size), np.repeat(fits.ravel(), Q)),
        **{k: np.empty(total, dtype=np.float64) for k in ("f", "a", "actual")},
        "o": np.empty(total, dtype=np.int64),
    }
    slot_of = {s: i for i, s in enumerate(rows.slots)}
    for gi, g in enumerate(rows.groups):
        a, b = (int(x) for x in spans[gi])
        if a == b:
            continue
        H = len(g.horizons)
        r = rows.rank[gi][a:b].astype(np.int64) - lo
        first = np.cumsum(n[:, gi]) - n[:, gi]
        j = np.arange(b - a) - first[r]  # the fit's place among its country's in the group
        runs = run_start[:, [slot_of[(gi, hj)] for hj in range(H)]][r]  # (P, H)
        runs += (country_start[r] + j)[:, None]  # the fit's rows of the first quantile's rank
        step = n[r, gi][:, None]  # a quantile's run: the country's fits in the group
        fi = rows.fit[gi][a:b]
        p, al = kept.take(gi, fi, rows.col[gi][a:b])
        origin = g.origin[fi].astype(np.int64)
        months = origin[:, None] + np.asarray(g.horizons, dtype=np.int64)[None, :]
        actual = actuals(np.repeat(rows.rank[gi][a:b], H), months.reshape(-1)).reshape(-1, H)
        # one scatter of (P, H) rows per quantile, in rank order: the places of a quantile's
        # rows are the previous rank's, one run further (no (P, H, Q) index array, nor the
        # per-fit values repeated Q times to match it)
        for q in by_rank.tolist():
            out["f"][runs] = p[:, :, q]
            out["a"][runs] = al[:, q, None]
            out["o"][runs] = origin[:, None]
            out["actual"][runs] = actual
            runs += step
    return out


def _rechunk(
    blocks: Iterator[dict[str, np.ndarray]], chunk: int
) -> Iterator[dict[str, np.ndarray]]:
    """The blocks' rows again as consecutive pieces of exactly `chunk` rows (the last shorter;
    one empty piece when there are no rows), as the whole table's slices were: the parquet
    file's row groups, and so its bytes, do not depend on the blocks."""
    held: dict[str, np.ndarray] = _no_rows()
    emitted = False
    for block in blocks:
        n, start = block["c"].size, 0
        if held["c"].size:  # under a chunk left over from the blocks before: filled up first
            start = min(chunk - held["c"].size, n)
            held = {k: np.concatenate([held[k], v[:start]]) for k, v in block.items()}
            if held["c"].size < chunk:
                continue
            yield held
            held, emitted = _no_rows(), True
        full = start + (n - start) - (n - start) % chunk
        for at in range(start, full, chunk):
            yield {k: v[at : at + chunk] for k, v in block.items()}
            emitted = True
        held = {k: v[full:].copy() for k, v in block.items()}  # a copy frees the block
    if held["c"].size or not emitted:
        yield held


def _no_rows() -> dict[str, np.ndarray]:
    """Flat columns of no rows, with the dtypes of a block's."""
    ints = {"c": np.int32, "h": np.int64, "q": np.int16, "o": np.int64}
    return {
        **{k: np.zeros(0, dtype=t) for k, t in ints.items()},
        **{k: np.zeros(0, dtype=np.float64) for k in ("f", "a", "actual")},
    }


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
