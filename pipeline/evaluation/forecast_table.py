"""The forecast table as the evaluation reads it (pure): its columns, their check, the labels
of levels and horizons, and the row tools every table step shares (codes in sort order, runs
of equal keys, a row selection without a copy).

A forecast table has the columns of `pipeline.schema`, whose names it imports (EVAL_COLUMNS
here: the ones the metrics read); one *forecast* is all the quantile levels of (MODEL,
COUNTRY, HORIZON, WINDOW_END). `metrics` re-exports these names (its callers read them as
`evaluate.<name>`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.schema import (  # the columns' names: defined once, in pipeline.schema
    ACTUAL,
    COUNTRY,
    FORECAST,
    HORIZON,
    MODEL,
    QUANTILE,
    TIME,
    WINDOW_END,
)

EVAL_COLUMNS = (TIME, COUNTRY, MODEL, QUANTILE, HORIZON, WINDOW_END, FORECAST, ACTUAL)
FORECAST_KEY = (MODEL, COUNTRY, HORIZON, WINDOW_END)  # one forecast = all its quantiles
ROW_KEY = (COUNTRY, HORIZON, QUANTILE, WINDOW_END)  # rows compared across models
BY_DEFAULT = (MODEL, HORIZON, QUANTILE)
# the model the relative pinball and the DM tests compare against when a caller names none:
# the library default of evaluation.benchmark, whose study default is conf/evaluation/
# default.yaml's (tests/test_one_source.py holds the two equal)
BENCHMARK = "ar_qr"
# what the scored rows' tables read (pinball, coverage, interval, CRPS): not TIME, which only
# the benchmark-relative DM reads (8 of a scored row's ~59 bytes)
SCORED_COLUMNS = tuple(c for c in EVAL_COLUMNS if c != TIME)


def quantile_label(quantile: float) -> str:
    """`0.1 -> "q0.1"`: the seed's spelling, used in file names and metric keys."""
    return f"q{float(quantile):g}"


def horizon_label(horizon: int) -> str:
    """`12 -> "h12"`."""
    return f"h{int(horizon)}"


def rank_codes(column: pd.Series) -> np.ndarray:
    """Integer codes in the column's sort order, missing values last (as sort_values puts
    them): sorting rows by codes sorts them by the values, without comparing strings. int32
    (half the memory of int64 over millions of rows) unless the column is longer."""
    codes, _ = pd.factorize(column, sort=True)
    codes = codes.astype(np.int32 if codes.size < 2**31 - 1 else np.int64, copy=False)
    codes[codes < 0] = codes.max(initial=-1) + 1
    return codes


def run_ids(columns: Sequence[np.ndarray]) -> np.ndarray:
    """0, 1, 2, ... numbering the runs of equal keys of rows sorted by those keys (the
    ngroup of a sorted groupby), from each key column's codes."""
    n = columns[0].size if len(columns) else 0
    change = np.zeros(n, dtype=bool)
    for codes in columns:
        change[1:] |= codes[1:] != codes[:-1]
    return np.cumsum(change)


def select_rows(
    frame: pd.DataFrame, mask: pd.Series | np.ndarray, columns: Sequence[str]
) -> pd.DataFrame:
    """`frame.loc[mask, columns]`, without copying millions of rows when the mask keeps all
    (copy-on-write: a column selection shares the frame's arrays)."""
    return frame[list(columns)] if bool(mask.all()) else frame.loc[mask, list(columns)]


def check_frame(frame: pd.DataFrame) -> None:
    """ValueError unless `frame` is a DataFrame with every forecast column (EVAL_COLUMNS)."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame must be a pandas DataFrame; got {type(frame).__name__}")
    missing = [c for c in EVAL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"frame must have the forecast columns {list(EVAL_COLUMNS)}; lacks {missing}"
        )
