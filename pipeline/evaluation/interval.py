"""The central interval's coverage and width per group (pure; metrics.interval_coverage and
metrics.metric_tables): each forecast's lowest-level row paired with its highest-level row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.forecast_table import ACTUAL, FORECAST, MODEL, QUANTILE
from pipeline.evaluation.grouping import Keys, group_mean


def interval_rows(
    rows: pd.DataFrame, by: list[str], forecast_key: list[str], keys: Keys | None = None
) -> pd.DataFrame:
    """`*by, LOWER, UPPER, NOMINAL, N, COVERAGE, WIDTH` from scored rows: per group, the share
    of forecasts (rows sharing `forecast_key`) whose actual lies between the forecasts at the
    model's lowest and highest level, and the mean width between them. `keys`: the codes of
    `rows`, when already made."""
    if rows.empty:  # no level to pair (the codes' table below would be empty): pandas' result
        none = np.zeros(0, dtype=np.int64)
        return _interval_merge(rows, by, forecast_key, none + 0.0, none + 0.0, none, none)
    if keys is None or keys.rows is not rows or not keys.dropna:
        keys = Keys(rows)
    # each model's lowest and highest level, from the codes of its rows' levels (sorted, -1:
    # missing): a table of which (model, level) pairs occur, not a groupby over every row
    model, n_models = keys.codes(MODEL)
    level, n_levels = keys.codes(QUANTILE)
    q = rows[QUANTILE].to_numpy(np.float64)
    known = (model >= 0) & (level >= 0)
    cells = np.bincount(
        model[known].astype(np.int64) * n_levels + level[known], minlength=n_models * n_levels
    )
    present = cells.reshape(n_models, n_levels) > 0
    has = present.any(axis=1)
    lo_code = np.where(has, present.argmax(axis=1), -1)
    hi_code = np.where(has, n_levels - 1 - present[:, ::-1].argmax(axis=1), -1)
    value = np.full(n_levels + 1, np.nan)  # each level code's value; the last: none
    value[level[known]] = q[known]
    model_lower = np.r_[value[lo_code], np.nan]  # by model code; the last: no model (-1)
    model_upper = np.r_[value[hi_code], np.nan]
    inner = model_lower < model_upper  # a model with one level has no interval
    # each row's model's level code in the codes' own narrow dtype (-2: none): not an int64
    # per row
    at_lo = np.flatnonzero(
        level == np.where(inner, np.r_[lo_code, -1], -2).astype(level.dtype)[model]
    )
    at_hi = np.flatnonzero(
        level == np.where(inner, np.r_[hi_code, -1], -2).astype(level.dtype)[model]
    )
    # each lower-level row paired with its forecast's upper-level row, in the lower rows'
    # order (the inner merge on the forecast key that this replaces), by forecast number
    forecast = keys.groups(forecast_key)
    hi_of = np.full(forecast.n_groups if forecast.kept is None else 0, -1, dtype=np.int64)
    if forecast.kept is None:
        hi_of[forecast.ids[at_hi]] = at_hi
    if forecast.kept is not None or np.count_nonzero(hi_of >= 0) != at_hi.size or not at_lo.size:
        # a key is missing, a forecast has several upper rows, or none: pandas' merge
        lower, upper = model_lower[model], model_upper[model]
        return _interval_merge(rows, by, forecast_key, lower, upper, at_lo, at_hi)
    partner = hi_of[forecast.ids[at_lo]]
    del hi_of, at_hi  # each array is freed once read: a third of the rows each, at 8 bytes
    matched = partner >= 0
    lo, hi = at_lo[matched], partner[matched]
    del at_lo, partner, matched
    f = rows[FORECAST].to_numpy(np.float64)
    f_lo, f_hi = f[lo], f[hi]
    del hi
    actual = rows[ACTUAL].to_numpy(np.float64)[lo]
    hit = ((f_lo <= actual) & (actual <= f_hi)).astype(np.float64)
    del actual
    width = np.subtract(f_hi, f_lo, out=f_hi)  # f_hi - f_lo, in f_hi's array
    del f_lo, f_hi
    both = rows[by].iloc[lo].reset_index(drop=True)
    both_keys = keys.subset(both, lo)
    table = group_mean(both, by, {"COVERAGE": hit, "WIDTH": width}, both_keys)
    # LOWER and UPPER are the model's (MODEL is in `by`): grouping by them too, as the
    # merge did, gives these groups, each with its model's pair
    group_model = model[lo][both_keys.groups(by).first]
    table.insert(len(by), "LOWER", model_lower[group_model])
    table.insert(len(by) + 1, "UPPER", model_upper[group_model])
    table.insert(len(by) + 2, "NOMINAL", table["UPPER"] - table["LOWER"])
    return table


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
