"""Checks shared by every source: the tidy layout, monthly TIME, unique (TIME, COUNTRY)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.data.errors import DataError
from pipeline.data.values import to_numeric_columns
from pipeline.schema import COUNTRY, TIME


def parse_months(values: pd.Series, where: str) -> pd.Series:
    """Parse TIME values like `2024-01`, `2024M01` or `2024-01-01` into month-start timestamps.

    A value that is not a month start (e.g. a daily date `2024-01-15`) is an error, because
    the pipeline's windows count months.
    """
    # each distinct value parsed once (format="mixed" reads every value on its own): a panel
    # repeats a few hundred months over all its rows
    codes, distinct = pd.factorize(values)  # a missing value: code -1
    text = pd.Series(distinct).astype("string").str.strip().str.replace("M", "-", regex=False)
    blank = np.flatnonzero((text == "").to_numpy(dtype=bool, na_value=False))
    absent = codes < 0
    if blank.size:
        absent |= np.isin(codes, blank)
    if absent.any():  # an empty cell would otherwise read as "not a month start: [nan]"
        raise DataError(
            f"{where}: {int(absent.sum())} rows have an empty TIME; give every row its month "
            "(YYYY-MM) or remove the row"
        )
    parsed_distinct = pd.to_datetime(text, errors="coerce", format="mixed").to_numpy()
    parsed = pd.Series(
        np.where(codes >= 0, parsed_distinct[codes], np.datetime64("NaT")),
        index=values.index,
        name=values.name,
    )
    bad = parsed.isna() & values.notna()
    if bad.any():
        sample = values[bad].astype(str).unique()[:3].tolist()
        raise DataError(f"{where}: TIME values {sample} are not months; use YYYY-MM (e.g. 2024-01)")
    not_month_start = parsed.dt.day != 1
    if not_month_start.any():
        sample = values[not_month_start].astype(str).unique()[:3].tolist()
        raise DataError(
            f"{where}: TIME is not monthly ({sample} are not month starts); "
            "aggregate the data to one value per month and use YYYY-MM"
        )
    return parsed.astype("datetime64[ns]")


def check_tidy(
    frame: pd.DataFrame,
    target: str,
    features: Sequence[str],
    where: str = "the data",
    non_numeric: str = "error",
    max_abs_value: float | None = None,
) -> pd.DataFrame:
    """Validate and normalize a tidy panel; raise DataError naming the problem and the fix.

    `where` names the source (its file) in every message; the value columns are checked by
    `pipeline.data.values.to_numeric_columns` (non_numeric and max_abs_value are data.*).
    """
    if frame.empty:
        raise DataError(f"{where} has no data rows; add rows or point data.path at the full file")
    for column in (TIME, COUNTRY):
        if column not in frame.columns:
            raise DataError(f"{where} has no {column} column; columns are {list(frame.columns)}")
    for column in (target, *features):
        if column not in frame.columns:
            available = [c for c in frame.columns if c not in (TIME, COUNTRY)]
            raise DataError(
                f"column {column!r} (data.target / data.features) is not in {where}; "
                f"available columns: {available}"
            )
    frame = frame.copy()
    if not pd.api.types.is_datetime64_any_dtype(frame[TIME]):
        frame[TIME] = parse_months(frame[TIME], where)
    elif frame[TIME].isna().any():
        raise DataError(f"{where}: {int(frame[TIME].isna().sum())} rows have no TIME (NaT)")
    elif (frame[TIME].dt.day != 1).any() or (frame[TIME].dt.normalize() != frame[TIME]).any():
        raise DataError(
            f"{where}: TIME is not monthly: every TIME must be the first day of a month"
        )
    frame[TIME] = frame[TIME].astype("datetime64[ns]")
    frame[COUNTRY] = frame[COUNTRY].astype("string").str.strip()
    no_country = frame[COUNTRY].isna() | (frame[COUNTRY] == "")
    if no_country.any():  # such rows were dropped without a word by the panel's groupby
        months = [f"{t:%Y-%m}" for t in frame.loc[no_country, TIME].head(3)]
        raise DataError(
            f"{where}: {int(no_country.sum())} rows have an empty COUNTRY (e.g. TIME {months}); "
            "give every row its country code or remove the row"
        )
    duplicated = frame.duplicated([TIME, COUNTRY], keep=False)
    if duplicated.any():
        sample = frame.loc[duplicated, [COUNTRY, TIME]].head(3)
        pairs = [f"{c} {t:%Y-%m}" for c, t in sample.itertuples(index=False)]
        raise DataError(
            f"{where}: duplicate (TIME, COUNTRY) rows, e.g. {pairs}; keep one row per country and month"
        )
    frame = to_numeric_columns(frame, [target, *features], where, non_numeric, max_abs_value)
    return frame.sort_values([COUNTRY, TIME], kind="stable").reset_index(drop=True)
