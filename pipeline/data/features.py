"""Missing-value policy, lag features and direct-horizon targets (pure; DESIGN.md "Definitions").

Everything here is causal: the value written for month t depends only on data up to month t
(imputation) or is an explicit shift of such values (lags look back, leads are targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.schema import (
    COUNTRY,
    TIME,
    Y_RAW,
    Y,
    lag_column,
    lead_column,
    month_index,
    month_start,
)

MISSING_POLICIES = ("forward_fill_then_mean", "drop")


def regularize(raw: pd.DataFrame, target: str) -> pd.DataFrame:
    """One row per (COUNTRY, month) from each country's first to last observed target month.

    Leading gaps (before the first observation) are dropped. Trailing gaps (after the last
    observation, e.g. the UK after 2020-11) are dropped too: filling years past a country's
    last value would fabricate data. Interior months missing from the file become NaN rows.
    Countries in sorted order, months ascending; (COUNTRY, TIME) must be unique (check_tidy).

    Built with whole-column arrays (each country's month range laid out by its offset), not a
    frame per country: a panel of 380 countries took about 1 CPU-s by country, 20 ms so.
    """
    columns = [c for c in raw.columns if c not in (TIME, COUNTRY)]
    codes, countries = pd.factorize(raw[COUNTRY], sort=True)  # -1: no country (dropped)
    countries = np.asarray(countries, dtype=object)
    placed = (codes >= 0) & raw[TIME].notna().to_numpy()
    observed = placed & raw[target].notna().to_numpy()
    months = np.where(placed, month_index(raw[TIME]), 0)
    if not observed.any():
        return raw.iloc[0:0].copy()
    # each country's first and last observed month (a country without one gets no rows)
    first = np.full(len(countries), np.iinfo(np.int64).max)
    last = np.full(len(countries), np.iinfo(np.int64).min)
    np.minimum.at(first, codes[observed], months[observed])
    np.maximum.at(last, codes[observed], months[observed])
    kept = last >= first
    length = np.where(kept, last - first + 1, 0)
    offset = np.concatenate([[0], np.cumsum(length)[:-1]])
    n = int(length.sum())
    out_country = np.repeat(np.arange(len(countries)), length)
    out_month = first[out_country] + np.arange(n) - offset[out_country]
    inside = placed & (months >= first[codes]) & (months <= last[codes])
    position = offset[codes[inside]] + months[inside] - first[codes[inside]]
    frame = {TIME: month_start(out_month).astype(raw[TIME].dtype), COUNTRY: countries[out_country]}
    for column in columns:  # numbers (check_tidy), so float64 as build_panel writes them
        filled = np.full(n, np.nan)
        filled[position] = raw[column].to_numpy(dtype=np.float64, na_value=np.nan)[inside]
        frame[column] = filled
    return pd.DataFrame(frame)


def impute(
    frame: pd.DataFrame,
    columns: Sequence[str],
    policy: str,
    month_mean: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Apply the missing-value policy to `columns` of a regularized panel, without look-ahead.

    `forward_fill_then_mean`: within each country carry the last observed value forward; what
    is still missing (a feature column that starts later than the target) gets the mean of the
    values other countries report for that same month, so no value from a later month is used.
    `drop`: leave gaps as NaN; fits whose rows touch a gap are skipped downstream.
    `month_mean` (indexed by TIME) supplies those same-month means when `frame` holds only
    some of the countries (one partition of a larger panel).
    """
    if policy not in MISSING_POLICIES:
        raise ValueError(f"data.missing must be one of {list(MISSING_POLICIES)}; got {policy!r}")
    frame = frame.sort_values([COUNTRY, TIME], kind="stable").reset_index(drop=True)
    if policy == "drop" or frame.empty:
        return frame
    filled = frame.groupby(COUNTRY, sort=False, observed=True)[list(columns)].ffill()
    if filled.isna().to_numpy().any():  # only values before a country's first one are left
        if month_mean is None:
            month_mean = cross_section_mean(frame, columns)
        same_month = month_mean.reindex(frame[TIME])[list(columns)].set_axis(frame.index)
        filled = filled.fillna(same_month)
    frame[list(columns)] = filled
    return frame


def month_mean_needed(
    raw: pd.DataFrame, target: str, features: Sequence[str], missing: str
) -> bool:
    """Whether `build_panel` reads the month means (`impute`): only for a feature that starts
    later than the target in some country. The target itself never needs them: its rows start
    at each country's first value (`regularize`), and forward filling covers every gap after."""
    if missing != "forward_fill_then_mean" or not features:
        return False
    frame = regularize(raw[[TIME, COUNTRY, target, *features]], target)
    later = frame.groupby(COUNTRY, sort=False, observed=True)[list(features)].ffill()
    return bool(later.isna().to_numpy().any())


def cross_section_mean(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Mean over countries of the values observed in each month (indexed by TIME)."""
    return frame.groupby(TIME, observed=True)[list(columns)].mean()


def add_lags_and_leads(
    frame: pd.DataFrame,
    variables: dict[str, str],
    lags: Sequence[int],
    horizons: Sequence[int],
) -> pd.DataFrame:
    """Add `{name}_lag{l}` (value at t - l) for each variable and `y_lead{h}` (y at t + h).

    `variables` maps a short name (`y`, or a feature column) to its source column. Lags may
    reach before a window's start (they were known at t); a lag before the country's first
    month is NaN. Rows are consecutive months within a country (see `regularize`).
    """
    grouped = frame.groupby(COUNTRY, sort=False, observed=True)
    new_columns: dict[str, pd.Series] = {}
    for name, source in variables.items():
        for lag in sorted(set(lags)):
            new_columns[lag_column(name, lag)] = grouped[source].shift(lag)
    for horizon in sorted(set(horizons)):
        new_columns[lead_column(horizon)] = grouped[Y].shift(-horizon)
    return pd.concat([frame, pd.DataFrame(new_columns, index=frame.index)], axis=1)


def build_panel(
    raw: pd.DataFrame,
    target: str,
    features: Sequence[str],
    lags: Sequence[int],
    horizons: Sequence[int],
    missing: str,
    month_mean: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The prepared panel of docs/ARCHITECTURE.md from a tidy raw frame (TIME, COUNTRY, columns).

    `lags` are the lags needed by any model (0 = the current value is always included).
    """
    frame = regularize(raw[[TIME, COUNTRY, target, *features]], target)
    frame = frame.rename(columns={target: Y_RAW})
    frame[Y] = frame[Y_RAW]
    if month_mean is not None:
        month_mean = month_mean.rename(columns={target: Y})
    frame = impute(frame, [Y, *features], missing, month_mean)
    all_lags = sorted({0, *lags})
    variables = {Y: Y, **{feature: feature for feature in features}}
    frame = add_lags_and_leads(frame, variables, all_lags, horizons)
    ordered = [COUNTRY, TIME, Y_RAW, Y]
    ordered += [lag_column(name, lag) for name in variables for lag in all_lags]
    ordered += [lead_column(h) for h in sorted(set(horizons))]
    frame = frame[ordered]
    frame[COUNTRY] = frame[COUNTRY].astype("string")
    frame[TIME] = frame[TIME].astype("datetime64[ns]")
    float_columns = [c for c in ordered if c not in (COUNTRY, TIME)]
    frame[float_columns] = frame[float_columns].astype(np.float64)
    return frame.sort_values([COUNTRY, TIME], kind="stable").reset_index(drop=True)


def panel_fingerprint(panel: pd.DataFrame) -> str:
    """Content hash of a prepared panel: same values and columns, same fingerprint."""
    import hashlib

    digest = hashlib.sha256()
    digest.update("|".join(panel.columns).encode())
    digest.update(pd.util.hash_pandas_object(panel, index=False).to_numpy().tobytes())
    return digest.hexdigest()
