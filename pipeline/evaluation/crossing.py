"""The crossing rate per group (pure; metrics.crossing_rate and metrics.metric_tables): the
share of forecasts whose FORECAST is not non-decreasing in QUANTILE, over every row with a
forecast (crossing needs no ACTUAL)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.forecast_table import FORECAST, FORECAST_KEY, QUANTILE
from pipeline.evaluation.grouping import Keys, group_mean


def crossing_rows(
    frame: pd.DataFrame,
    by: list[str],
    keys: Keys | None = None,
    where: np.ndarray | None = None,
) -> pd.DataFrame:
    """The crossing table of `frame`'s rows (those at `where`, when given)."""
    key = list(FORECAST_KEY)
    has = frame[FORECAST].notna().to_numpy()
    if where is not None:
        has = has & where
    if not has.any():
        rows = frame.loc[has, key]
        return group_mean(rows, by, {"CROSSING_RATE": np.empty(0)})
    # one sort of numbers (forecast id, level) instead of a sort and groupbys on the keys;
    # a missing key is a value of its own here (the groupby below drops it where it is in `by`).
    # No copy of the rows: their codes are the frame's (a stub of their length stands for
    # them), their levels and forecasts two arrays (at a million fits, the copy of six
    # columns was this table's peak)
    keys = Keys(frame) if keys is None or keys.rows is not frame else keys
    at = None if has.all() else np.flatnonzero(has)  # None: every row
    stub = pd.DataFrame(index=pd.RangeIndex(len(frame) if at is None else at.size))
    forecast = keys.subset(stub, has, dropna=False).groups(key)
    level = frame[QUANTILE].to_numpy(np.float64)
    values = frame[FORECAST].to_numpy(np.float64)
    if at is not None:
        level, values = level[at], values[at]
    order = np.lexsort((level, forecast.ids))
    del level
    ids = forecast.ids[order]  # the forecast of each sorted row
    values = values[order]
    del order
    same = ids[1:] == ids[:-1]
    down = same & (values[1:] < values[:-1])  # a step down between adjacent levels
    crossed = np.bincount(ids[1:][down], minlength=forecast.n_groups) > 0
    first = forecast.first if at is None else at[forecast.first]  # positions in `frame`
    per_forecast = frame[key].iloc[first].reset_index(drop=True)
    per_keys = keys.subset(per_forecast, first, dropna=True)
    crossing = crossed.astype(np.float64)
    return group_mean(per_forecast, by, {"CROSSING_RATE": crossing}, per_keys)
