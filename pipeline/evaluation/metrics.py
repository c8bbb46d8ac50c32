"""Metrics on a forecast table (pure: no I/O, no dask).

Every metric function has one signature style: `f(frame, *, by=..., ...) -> DataFrame`, where
`frame` is a forecast table in the schema of `pipeline.schema` and the result is a tidy table
sorted by the `by` columns, with a row count `N` and the metric columns. A row is *scored*
when both ACTUAL and FORECAST are non-null; unscored rows never enter a loss or a coverage.
The forecast table's columns, its check and the row tools the table steps share are in
`forecast_table` (importable from here too, as `evaluate.<name>`).

Definitions (q = quantile level, y = ACTUAL, F = FORECAST, u = y - F):

- pinball loss  rho_q(u) = max(q * u, (q - 1) * u)
- relative pinball  mean rho of the model / mean rho of the benchmark, on the common set of
  (COUNTRY, HORIZON, QUANTILE, WINDOW_END) rows that both scored
- coverage of a quantile  share of rows with y <= F
- central interval  [F at the model's lowest level, F at its highest level]; coverage is the
  share with F_lo <= y <= F_hi, width the mean of F_hi - F_lo, nominal q_hi - q_lo
- CRPS approximation  CRPS = 2 * int_0^1 rho_q dq ~= 2 * mean over the forecast's quantile
  levels of rho_q (equal-weight rule; crude with 3 levels, exact in the limit of a dense grid)
- crossing rate  share of forecasts (MODEL, COUNTRY, HORIZON, WINDOW_END) whose FORECAST is
  not non-decreasing in QUANTILE (computed on all rows with a forecast, scored or not)
- Diebold-Mariano  d = rho(model) - rho(benchmark) per common row, averaged over the rows of a
  group that share TIME (default: over quantiles and countries), giving one series per group
  on a monthly grid; HAC variance with Bartlett weights and h - 1 lags; optional
  Harvey-Leybourne-Newbold correction with a t(T - 1) p-value (else normal). Negative
  statistic = the model beats the benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.crossing import crossing_rows as _crossing_rows
from pipeline.evaluation.dm import dm_rows
from pipeline.evaluation.dm import dm_test as dm_test  # public here too
from pipeline.evaluation.forecast_table import (
    ACTUAL,
    BENCHMARK,
    BY_DEFAULT,
    COUNTRY,
    EVAL_COLUMNS,
    FORECAST,
    FORECAST_KEY,
    HORIZON,
    MODEL,
    QUANTILE,
    ROW_KEY,
    SCORED_COLUMNS,
    check_frame,
    select_rows,
)
from pipeline.evaluation.forecast_table import TIME as TIME  # public here too
from pipeline.evaluation.forecast_table import WINDOW_END as WINDOW_END
from pipeline.evaluation.forecast_table import horizon_label as horizon_label
from pipeline.evaluation.forecast_table import quantile_label as quantile_label
from pipeline.evaluation.forecast_table import rank_codes as rank_codes
from pipeline.evaluation.forecast_table import run_ids as run_ids
from pipeline.evaluation.grouping import Keys, group_mean
from pipeline.evaluation.interval import interval_rows
from pipeline.evaluation.periods import COVID_END as COVID_END  # public here too
from pipeline.evaluation.periods import COVID_START as COVID_START
from pipeline.evaluation.periods import covid_mask as covid_mask
from pipeline.evaluation.periods import exclude_covid as exclude_covid
from pipeline.evaluation.periods import period_frames as period_frames


def _check_by(by: Sequence[str], allowed: Sequence[str], required: Sequence[str]) -> list[str]:
    by = [by] if isinstance(by, str) else list(by)
    bad = [c for c in by if c not in allowed]
    absent = [c for c in required if c not in by]
    if bad or absent or len(set(by)) != len(by):
        raise ValueError(
            f"by must be distinct columns among {list(allowed)} including {list(required)}; got {by}"
        )
    return by


def pinball_loss(actual: np.ndarray, forecast: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The pinball (check) loss of each forecast at its quantile level (float64 arrays)."""
    u = actual - forecast
    return np.maximum(level * u, (level - 1.0) * u)


def _scored(
    frame: pd.DataFrame,
    mask: pd.Series | np.ndarray | None = None,
    columns: Sequence[str] = EVAL_COLUMNS,
) -> pd.DataFrame:
    """Rows with both ACTUAL and FORECAST (`mask`, when already made), plus their pinball
    loss in column LOSS; `columns` (default EVAL_COLUMNS): those of `frame` they keep."""
    check_frame(frame)
    mask = _scored_mask(frame) if mask is None else mask
    rows = select_rows(frame, mask, columns)
    y, f = rows[ACTUAL].to_numpy(np.float64), rows[FORECAST].to_numpy(np.float64)
    return rows.assign(LOSS=pinball_loss(y, f, rows[QUANTILE].to_numpy(np.float64)))


def _scored_mask(frame: pd.DataFrame) -> pd.Series:
    return frame[ACTUAL].notna() & frame[FORECAST].notna()


def _check_benchmark(frame: pd.DataFrame, benchmark: str) -> None:
    models = sorted(frame[MODEL].dropna().unique().tolist())
    if benchmark not in models:
        raise ValueError(
            f"benchmark must be one of the models in frame {models}; got {benchmark!r}"
        )


def _with_benchmark(
    rows: pd.DataFrame, benchmark: str, keys: Keys | None = None
) -> tuple[pd.DataFrame, Keys]:
    """Scored rows of every model joined to the benchmark's loss on the same row key (column
    BENCH_LOSS), and the joined rows' codes: pandas' inner merge on ROW_KEY (the rows with a
    benchmark row, in `rows`' order), from the row keys' group numbers instead of hashing
    the key columns again. `keys`: the codes of `rows`, when already made."""
    keys = keys if keys is not None and keys.rows is rows else Keys(rows)
    is_bench = rows[MODEL].eq(benchmark).to_numpy(dtype=bool, na_value=False)
    row = keys.groups(ROW_KEY)
    bench_at = np.full(row.n_groups if row.kept is None else 0, -1, dtype=np.int64)
    if row.kept is None:  # the benchmark's row of each row key (-1: none)
        bench_at[row.ids[is_bench]] = np.flatnonzero(is_bench)
    if row.kept is not None or np.count_nonzero(bench_at >= 0) != np.count_nonzero(is_bench):
        # a missing key (the merge matches NaN to NaN) or a row key the benchmark repeats
        bench = rows.loc[is_bench, [*ROW_KEY, "LOSS"]].rename(columns={"LOSS": "BENCH_LOSS"})
        joined = rows.merge(bench, on=list(ROW_KEY), how="inner")
        return joined, Keys(joined)
    partner = bench_at[row.ids]
    loss = rows["LOSS"].to_numpy(np.float64)
    match = partner >= 0
    if match.all():  # every row (a study of the benchmark alone): no copy of the rows
        joined = rows.reset_index(drop=True).assign(BENCH_LOSS=loss[partner])
        return joined, keys.subset(joined, match)
    where = np.flatnonzero(match)
    joined = rows.iloc[where].reset_index(drop=True)
    joined["BENCH_LOSS"] = loss[partner[where]]
    return joined, keys.subset(joined, where)


# --- metrics --------------------------------------------------------------------------------
def pinball(frame: pd.DataFrame, *, by: Sequence[str] = BY_DEFAULT) -> pd.DataFrame:
    """Mean pinball loss per group: columns `*by, N, PINBALL`."""
    by = _check_by(by, (MODEL, COUNTRY, HORIZON, QUANTILE), (MODEL,))
    return _pinball_rows(_scored(frame), by)


def _pinball_rows(scored: pd.DataFrame, by: list[str], keys: Keys | None = None) -> pd.DataFrame:
    return group_mean(scored, by, {"PINBALL": "LOSS"}, keys)


def relative_pinball(
    frame: pd.DataFrame, *, benchmark: str = BENCHMARK, by: Sequence[str] = BY_DEFAULT
) -> pd.DataFrame:
    """Pinball relative to `benchmark` on the common rows: `*by, N, PINBALL, BENCHMARK_PINBALL,
    RELATIVE_PINBALL` (< 1 means the model beats the benchmark)."""
    by = _check_by(by, (MODEL, COUNTRY, HORIZON, QUANTILE), (MODEL,))
    check_frame(frame)
    _check_benchmark(frame, benchmark)
    return _relative_table(frame, benchmark, by)


def _relative_table(frame: pd.DataFrame, benchmark: str, by: list[str]) -> pd.DataFrame:
    joined, keys = _with_benchmark(_scored(frame), benchmark)
    return _relative_rows(joined, by, keys)


def _relative_rows(joined: pd.DataFrame, by: list[str], keys: Keys | None = None) -> pd.DataFrame:
    out = {"PINBALL": "LOSS", "BENCHMARK_PINBALL": "BENCH_LOSS"}
    table = group_mean(joined, by, out, keys)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["RELATIVE_PINBALL"] = table["PINBALL"] / table["BENCHMARK_PINBALL"]
    return table


def coverage(frame: pd.DataFrame, *, by: Sequence[str] = BY_DEFAULT) -> pd.DataFrame:
    """Empirical coverage of each quantile, share of y <= F: `*by, N, COVERAGE`."""
    by = _check_by(by, (MODEL, COUNTRY, HORIZON, QUANTILE), (MODEL, QUANTILE))
    return _coverage_rows(_scored(frame), by)


def _coverage_rows(rows: pd.DataFrame, by: list[str], keys: Keys | None = None) -> pd.DataFrame:
    hit = rows[ACTUAL].to_numpy(np.float64) <= rows[FORECAST].to_numpy(np.float64)
    return group_mean(rows, by, {"COVERAGE": hit.astype(np.float64)}, keys)


def interval_coverage(frame: pd.DataFrame, *, by: Sequence[str] = (MODEL, HORIZON)) -> pd.DataFrame:
    """Coverage and width of each model's central interval (lowest to highest quantile level):
    `*by, LOWER, UPPER, NOMINAL, N, COVERAGE, WIDTH`."""
    by = _check_by(by, (MODEL, COUNTRY, HORIZON), (MODEL,))
    return interval_rows(_scored(frame), by, list(FORECAST_KEY))


def crps(frame: pd.DataFrame, *, by: Sequence[str] = (MODEL, HORIZON)) -> pd.DataFrame:
    """Quantile approximation of the CRPS, 2 * mean_q rho_q per forecast, averaged per group:
    `*by, N, CRPS` (N counts forecasts, not rows)."""
    by = _check_by(by, (MODEL, COUNTRY, HORIZON), (MODEL,))
    return _crps_rows(_scored(frame), by)


def _crps_rows(rows: pd.DataFrame, by: list[str], keys: Keys | None = None) -> pd.DataFrame:
    keys = keys if keys is not None and keys.rows is rows else Keys(rows)
    if rows.empty:
        per_forecast = rows[list(FORECAST_KEY)].assign(LOSS=rows["LOSS"])
    else:  # the mean loss of each forecast, forecasts in key order (a sorted groupby's)
        forecast = keys.groups(FORECAST_KEY)
        per_forecast = rows[list(FORECAST_KEY)].iloc[forecast.first].reset_index(drop=True)
        per_forecast["LOSS"] = forecast.mean(rows["LOSS"].to_numpy(np.float64))
        keys = keys.subset(per_forecast, forecast.first)
    per_forecast["LOSS"] *= 2.0
    return group_mean(per_forecast, by, {"CRPS": "LOSS"}, keys)


def crossing_rate(frame: pd.DataFrame, *, by: Sequence[str] = (MODEL, HORIZON)) -> pd.DataFrame:
    """Share of forecasts whose quantiles are not non-decreasing: `*by, N, CROSSING_RATE`.

    Uses every row with a FORECAST (crossing needs no ACTUAL)."""
    by = _check_by(by, (MODEL, COUNTRY, HORIZON), (MODEL,))
    check_frame(frame)
    return _crossing_rows(frame, by)


def diebold_mariano(
    frame: pd.DataFrame,
    *,
    benchmark: str = BENCHMARK,
    by: Sequence[str] = (MODEL, HORIZON),
    small_sample: bool = True,
) -> pd.DataFrame:
    """DM test of each model against `benchmark` on pinball losses of the common rows:
    `*by, N, MONTHS, MEAN_DIFF, STAT, P_VALUE, P_HOLM` (N rows, MONTHS = T of the series;
    P_HOLM: P_VALUE adjusted for the table's number of rows, dm.holm; the benchmark itself is
    left out). Rows outside `by` are averaged per TIME first."""
    by = _check_by(by, (MODEL, COUNTRY, HORIZON, QUANTILE), (MODEL, HORIZON))
    check_frame(frame)
    _check_benchmark(frame, benchmark)
    return _dm_table(frame, benchmark, by, small_sample)


def _dm_table(
    frame: pd.DataFrame, benchmark: str, by: list[str], small_sample: bool
) -> pd.DataFrame:
    joined, _ = _with_benchmark(_scored(frame), benchmark)
    return dm_rows(joined, benchmark, by, small_sample, {c: frame[c].dtype for c in by})


# --- tables for assemble ---------------------------------------------------------------------
# metric_tables' tables, in order (each is computed on its own: the order of the steps changes
# no table); the report requires them, assemble writes each as reports/tables/<name>.parquet
METRIC_TABLES = (
    "pinball",
    "pinball_by_country",
    "relative_pinball",
    "coverage",
    "interval",
    "crps",
    "crossing",
    "dm",
    "dm_by_quantile",
)


def compact_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns the metrics read (EVAL_COLUMNS) with MODEL and COUNTRY categorical (sorted
    categories, so groups sort as the strings do): every groupby, merge and sort of the
    metric steps then works on small integer codes instead of strings."""
    check_frame(frame)
    out = frame[list(EVAL_COLUMNS)]
    codes = {
        c: pd.Categorical(out[c])
        for c in (MODEL, COUNTRY)
        if not isinstance(out[c].dtype, pd.CategoricalDtype)
    }
    return out.assign(**codes)


def metric_tables(
    frame: pd.DataFrame, benchmark: str = BENCHMARK, *, key_dtypes: Mapping[str, Any] | None = None
) -> dict[str, pd.DataFrame]:
    """Every metric table, each with a leading PERIOD column ("all", "ex_covid").

    Benchmark-relative tables (relative pinball, DM) have zero rows when `benchmark` is not
    among the models, instead of failing: a study may run without the benchmark. The key
    columns get `key_dtypes` (default: the frame's; pass the original dtypes when `frame` is
    a `compact_frame`)."""
    check_frame(frame)
    mchq = [MODEL, COUNTRY, HORIZON, QUANTILE]
    dtypes = {c: (frame[c].dtype if key_dtypes is None else key_dtypes[c]) for c in mchq}
    work = compact_frame(frame)
    # the scored rows, their join to the benchmark and the codes of their keys, once per
    # period for every table (k: the scored rows' codes, jk: the joined rows'); the tables of
    # the joined rows first, so the join is dropped before the scored rows' larger steps
    joined_makers = {
        "relative_pinball": lambda j, jk: _relative_rows(j, list(BY_DEFAULT), jk),
        "dm": lambda j, jk: dm_rows(j, benchmark, [MODEL, HORIZON], True, dtypes),
        "dm_by_quantile": lambda j, jk: dm_rows(j, benchmark, list(BY_DEFAULT), True, dtypes),
    }
    scored_makers = {
        "pinball": lambda s, k: _pinball_rows(s, list(BY_DEFAULT), k),
        "pinball_by_country": lambda s, k: _pinball_rows(s, mchq, k),
        "coverage": lambda s, k: _coverage_rows(s, list(BY_DEFAULT), k),
        "interval": lambda s, k: interval_rows(s, [MODEL, HORIZON], list(FORECAST_KEY), k),
        "crps": lambda s, k: _crps_rows(s, [MODEL, HORIZON], k),
    }
    # the rows' grouping each of them reads from `k` (the others group subsets of their own)
    scored_groups = {
        "pinball": BY_DEFAULT,
        "pinball_by_country": tuple(mchq),
        "coverage": BY_DEFAULT,
        "interval": FORECAST_KEY,
        "crps": FORECAST_KEY,
    }
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in METRIC_TABLES}
    # the key columns factorized once; each period's scored rows take their codes from these,
    # and the COVID months are left out by a mask (no copy of the whole frame)
    work_keys = Keys(work)
    covid = covid_mask(work)
    periods = ("all", "ex_covid")
    has_benchmark = bool(work[MODEL].eq(benchmark).any())
    for period in periods:  # one period's rows in memory at a time
        where = None if period == "all" else ~covid
        mask = _scored_mask(work).to_numpy()
        if where is not None:
            mask = mask & where
        # the joined rows need TIME (DM's months); without the benchmark they are none, made
        # from no rows (the same empty tables) instead of a copy of every scored row
        scored = _scored(work, mask if has_benchmark else np.zeros_like(mask))
        keys = work_keys.subset(scored, mask if has_benchmark else np.zeros_like(mask))
        joined, joined_keys = _with_benchmark(scored, benchmark, keys)
        del scored, keys
        for name, make in joined_makers.items():
            parts[name].append(make(joined, joined_keys).assign(PERIOD=period))
        del joined, joined_keys
        scored = _scored(work, mask, SCORED_COLUMNS)
        keys = work_keys.subset(scored, mask)
        for i, (name, make) in enumerate(scored_makers.items()):
            parts[name].append(make(scored, keys).assign(PERIOD=period))
            # a grouping's ids (4 bytes a row) kept only while a later table groups by it
            keys.forget_groups(
                keep=[scored_groups[later] for later in list(scored_makers)[i + 1 :]]
            )
        del scored, keys
    # the crossing table reads the whole frame, not the scored rows: made once they are gone
    # (its sort of every row's forecast was the metric step's peak beside them)
    for period in periods:
        where = None if period == "all" else ~covid
        table = _crossing_rows(work, [MODEL, HORIZON], work_keys, where)
        parts["crossing"].append(table.assign(PERIOD=period))
    tables = {}
    for name, pieces in parts.items():
        table = pd.concat(pieces, ignore_index=True)
        for c in mchq:  # categorical keys back to the frame's dtypes
            coded = c in table.columns and isinstance(table[c].dtype, pd.CategoricalDtype)
            if coded and not isinstance(dtypes[c], pd.CategoricalDtype):
                table[c] = table[c].astype(dtypes[c])
        tables[name] = table[["PERIOD", *table.columns[:-1]]]
    return tables
