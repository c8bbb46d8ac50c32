"""Forecast combination `combo` and the rearrangement of forecast tables (pure).

`combo` (DESIGN.md "Benchmarks, combination and recalibration"): for each (COUNTRY,
WINDOW_END, HORIZON, QUANTILE), the mean (or median) of the member models' FORECAST over the
members that have one; then rearranged, i.e. each forecast's values sorted across QUANTILE
(Chernozhukov et al.'s rearrangement: never worse in pinball loss than the crossing original).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

COMBO = "combo"
FORECAST_ID = ["MODEL", "COUNTRY", "HORIZON", "WINDOW_END"]  # one forecast = its quantiles


def rearrange(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each forecast's FORECAST values sorted across QUANTILE (NaN last), in the
    row order (MODEL, COUNTRY, HORIZON, WINDOW_END, QUANTILE)."""
    by_level = frame.sort_values([*FORECAST_ID, "QUANTILE"], kind="stable").reset_index(drop=True)
    by_value = frame.sort_values([*FORECAST_ID, "FORECAST"], kind="stable", na_position="last")
    # both orders list the same forecasts in the same sequence, so position i of one is the
    # i-th smallest value of the forecast that position i of the other belongs to
    by_level["FORECAST"] = by_value["FORECAST"].to_numpy()
    return by_level


def combine(
    frame: pd.DataFrame,
    members: Sequence[str],
    *,
    method: Literal["mean", "median"] = "mean",
    name: str = COMBO,
) -> pd.DataFrame:
    """The combination's rows (MODEL = `name`) in the schema of `frame`; empty when no member
    has a forecast. Columns not defined by the combination (model extras) are NaN."""
    if method not in ("mean", "median"):
        raise ValueError(f"method must be 'mean' or 'median'; got {method!r}")
    rows = frame.loc[frame["MODEL"].isin(list(members)) & frame["FORECAST"].notna()]
    key = ["COUNTRY", "WINDOW_END", "HORIZON", "QUANTILE"]
    carried = [c for c in ("TIME", "TARGET", "WINDOW_START", "ACTUAL") if c in frame.columns]
    combined = (
        rows.groupby(key, sort=True, observed=True)
        .agg(FORECAST=("FORECAST", method), **{c: (c, "first") for c in carried})
        .reset_index()
    )
    combined.insert(0, "MODEL", name)
    for column in frame.columns:
        if column not in combined.columns:
            combined[column] = np.nan
    return rearrange(combined[list(frame.columns)])
