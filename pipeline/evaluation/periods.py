"""The evaluation periods (pure): every metric table is made over all rows and over the rows
whose TIME (the month forecast) lies outside the COVID months."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.schema import TIME, month_index

COVID_START, COVID_END = "2020-03", "2021-12"


def _month_index(value: str, name: str) -> int:
    try:
        period = pd.Period(value, freq="M")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a month like '2020-03'; got {value!r}") from exc
    return month_index(period.start_time)


def exclude_covid(
    frame: pd.DataFrame, start: str = COVID_START, end: str = COVID_END
) -> pd.DataFrame:
    """Drop rows whose TIME (the month forecast) lies in [start, end], both months included."""
    return frame.loc[~covid_mask(frame, start, end)].reset_index(drop=True)


def covid_mask(frame: pd.DataFrame, start: str = COVID_START, end: str = COVID_END) -> np.ndarray:
    """True where TIME lies in [start, end]."""
    lo, hi = _month_index(start, "start"), _month_index(end, "end")
    if hi < lo:
        raise ValueError(f"end must not precede start; got start={start!r}, end={end!r}")
    month = np.asarray(month_index(frame[TIME]))
    return (month >= lo) & (month <= hi)


def period_frames(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The evaluation periods: {"all": frame, "ex_covid": frame without the COVID months}."""
    return {"all": frame, "ex_covid": exclude_covid(frame)}
