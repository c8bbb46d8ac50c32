"""The central interval's coverage and width per group (pure; metrics.interval_coverage and
metrics.metric_tables): each forecast's lowest-level row paired with its highest-level row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.grouping import Keys, group_mean

MODEL, QUANTILE, ACTUAL, FORECAST = "MODEL", "QUANTILE", "ACTUAL", "FORECAST"  # metrics' names


def interval_rows(
    rows: pd.DataFrame, by: list[str], forecast_key: list[str], keys: Keys | None = None
) -> pd.DataFrame:
    """`*by, LOWER, UPPER, NOMINAL, N, COVERAGE, WIDTH` from scored rows: per group, the share
    of forecasts (rows sharing `forecast_key`) whose actual lies between the forecasts at the
    model's lowest and highest level, and the mean width between them. `keys`: the codes of
    `rows`, when already made."""
    keys = keys if keys is not None and keys.rows is rows else Keys(rows)
    # each row's model levels (lowest and highest) as arrays, from the model codes
    model, n_models = keys.codes(MODEL)
    q = rows[QUANTILE].to_numpy(np.float64)
    levels = pd.Series(q).groupby(model).agg(["min", "max"]).reindex(range(n_models))
    lower = np.where(model >= 0, levels["min"].to_numpy(np.float64)[model], np.nan)
    upper = np.where(model >= 0, levels["max"].to_numpy(np.float64)[model], np.nan)
    inner = lower < upper
    at_lo, at_hi = np.flatnonzero(inner & (q == lower)), np.flatnonzero(inner & (q == upper))
    # each lower-level row paired with its forecast's upper-level row, in the lower rows'
    # order: the inner merge on the forecast key that this replaces
    forecast = keys.groups(forecast_key)
    if forecast.kept is not None:  # a key is missing: pandas' merge
        return _interval_merge(rows, by, forecast_key, lower, upper, at_lo, at_hi)
    hi_id = forecast.ids[at_hi]
    order = np.argsort(hi_id, kind="stable")
    hi_sorted = hi_id[order]
    if hi_sorted.size and (hi_sorted[1:] == hi_sorted[:-1]).any():  # not one row per forecast
        return _interval_merge(rows, by, forecast_key, lower, upper, at_lo, at_hi)
    lo_id = forecast.ids[at_lo]
    pos = np.minimum(np.searchsorted(hi_sorted, lo_id), max(hi_sorted.size - 1, 0))
    matched = hi_sorted[pos] == lo_id if hi_sorted.size else np.zeros(lo_id.size, bool)
    lo, hi = at_lo[matched], at_hi[order[pos[matched]]]
    actual = rows[ACTUAL].to_numpy(np.float64)[lo]
    f = rows[FORECAST].to_numpy(np.float64)
    f_lo, f_hi = f[lo], f[hi]
    both = rows[by].iloc[lo].reset_index(drop=True).assign(LOWER=lower[lo], UPPER=upper[lo])
    hit = ((f_lo <= actual) & (actual <= f_hi)).astype(np.float64)
    return _interval_table(both, by, hit, f_hi - f_lo)


def _interval_merge(
    rows: pd.DataFrame,
    by: list[str],
    key: list[str],
    lower: np.ndarray,
    upper: np.ndarray,
    at_lo: np.ndarray,
    at_hi: np.ndarray,
) -> pd.DataFrame:
    """The interval table by a pandas merge of the lower and upper rows (missing keys or
    several rows per forecast and level: pandas' join semantics)."""
    lo = rows.iloc[at_lo][[*key, ACTUAL, FORECAST]].assign(LOWER=lower[at_lo], UPPER=upper[at_lo])
    both = lo.merge(rows.iloc[at_hi][[*key, FORECAST]], on=key, suffixes=("_LO", "_HI"))
    f_lo, f_hi = both["FORECAST_LO"].to_numpy(np.float64), both["FORECAST_HI"].to_numpy(np.float64)
    actual = both[ACTUAL].to_numpy(np.float64)
    hit = ((f_lo <= actual) & (actual <= f_hi)).astype(np.float64)
    return _interval_table(both, by, hit, f_hi - f_lo)


def _interval_table(
    both: pd.DataFrame, by: list[str], hit: np.ndarray, width: np.ndarray
) -> pd.DataFrame:
    groups = [*by, "LOWER", "UPPER"]
    table = group_mean(both, groups, {"COVERAGE": hit, "WIDTH": width})
    table.insert(len(groups), "NOMINAL", table["UPPER"] - table["LOWER"])
    return table
