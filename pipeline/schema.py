"""Column names and dtypes of every table the pipeline writes, where in an output dir the
shared artifacts live, and the integer month index every layer computes with. Defined once,
used everywhere."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

if TYPE_CHECKING:  # imported where used: a worker's task needs the names, not pandas
    import pandas as pd

# --- artifacts shared between stages (paths relative to runtime.output_dir) -------------------
PANEL_FILE = Path("data/prepared/panel.parquet")
META_FILE = Path("data/prepared/meta.json")
# what a person opens after a run (`qpipe run` ends by naming them)
REPORT_FILE = Path("reports/index.html")
FORECASTS_FILE = Path("forecasts/all.parquet")
METRICS_FILE = Path("metrics.json")
# a model or country code names files and folders (forecasts/<model>_q.._h...parquet, ...)
SAFE_CODE = r"[A-Za-z0-9][A-Za-z0-9_.-]*"

# --- months -----------------------------------------------------------------------------------
# A month is a Timestamp at month start in tables; arithmetic uses m = year * 12 + (month - 1),
# so consecutive months differ by exactly 1 (docs/ARCHITECTURE.md, "Time").
_EPOCH = 1970 * 12  # numpy's datetime64[M] counts months from 1970-01


@overload
def month_index(times: str | date) -> int: ...
@overload
def month_index(times: Any) -> np.ndarray: ...
def month_index(times: Any) -> int | np.ndarray:
    """m = year * 12 + month - 1 of a month (str, Timestamp: an int) or of many (Series,
    DatetimeIndex, datetime64 array: an int64 array); any day of a month gives its index."""
    if isinstance(times, date):  # Timestamp and datetime are dates too
        return times.year * 12 + times.month - 1
    if isinstance(times, str):
        day = iso_day(times)
        if day is None:  # any other spelling, as pandas reads it
            import pandas as pd

            day = pd.Timestamp(times)
        return day.year * 12 + day.month - 1
    return np.asarray(times, dtype="datetime64[M]").astype(np.int64) + _EPOCH


_ISO_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def iso_day(text: str) -> date | None:
    """An ISO day ('2018-01-01': what conf/ and the plan's origins spell) of a year every
    pandas reads the same way, read without pandas (probe, train and config validation import
    none); None for any other spelling or no such day (2018-02-30), for pandas to read."""
    match = _ISO_DAY.fullmatch(text)
    if match is None or not 1678 <= int(match[1]) <= 2261:
        return None
    try:
        return date(*map(int, match.groups()))
    except ValueError:
        return None


@overload
def month_start(index: int) -> pd.Timestamp: ...
@overload
def month_start(index: np.ndarray) -> pd.DatetimeIndex: ...
def month_start(index: int | np.ndarray) -> pd.Timestamp | pd.DatetimeIndex:
    """Inverse of month_index: the month-start Timestamp (datetime64[ns] for an array)."""
    import pandas as pd

    if isinstance(index, int | np.integer):
        return pd.Timestamp(year=int(index) // 12, month=int(index) % 12 + 1, day=1)
    months = (np.asarray(index, dtype=np.int64) - _EPOCH).astype("datetime64[M]")
    return pd.DatetimeIndex(months.astype("datetime64[ns]"))


# --- prepared panel -----------------------------------------------------------------------
COUNTRY = "COUNTRY"
TIME = "TIME"
Y_RAW = "y_raw"
Y = "y"


def lag_column(variable: str, lag: int) -> str:
    """Name of the column holding `variable` lagged by `lag` months (lag 0 = current value)."""
    return f"{variable}_lag{lag}"


def lead_column(horizon: int) -> str:
    """Name of the column holding the target `horizon` months ahead, y_{t+h}."""
    return f"y_lead{horizon}"


# --- forecast tables (the seed's columns, in the seed's order, then ours) -----------------
# Each column's name, once: the evaluation (pipeline.evaluation.forecast_table) imports these
TARGET, MODEL, QUANTILE, HORIZON = "TARGET", "MODEL", "QUANTILE", "HORIZON"
WINDOW_START, WINDOW_END, FORECAST, ACTUAL, ALPHA = (
    "WINDOW_START",
    "WINDOW_END",
    "FORECAST",
    "ACTUAL",
    "ALPHA",
)
FORECAST_COLUMNS: tuple[str, ...] = (
    TIME,
    COUNTRY,
    TARGET,
    MODEL,
    QUANTILE,
    HORIZON,
    WINDOW_START,
    WINDOW_END,
    FORECAST,
    ACTUAL,
    ALPHA,
)
SEED_FORECAST_COLUMNS: tuple[str, ...] = FORECAST_COLUMNS[:9]

FORECAST_DTYPES: dict[str, str] = {
    "TIME": "datetime64[ns]",
    "COUNTRY": "string",
    "TARGET": "string",
    "MODEL": "string",
    "QUANTILE": "float64",
    "HORIZON": "int64",
    "WINDOW_START": "datetime64[ns]",
    "WINDOW_END": "datetime64[ns]",
    "FORECAST": "float64",
    "ACTUAL": "float64",
    "ALPHA": "float64",
}

# Sort order that makes every forecast table deterministic.
FORECAST_SORT: tuple[str, ...] = ("MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END")


def forecast_arrow_schema() -> Any:
    """FORECAST_COLUMNS with FORECAST_DTYPES as Arrow types: what pandas writes for them
    (train writes its table from Arrow directly, with these exact types)."""
    import pyarrow as pa

    types = {
        "datetime64[ns]": pa.timestamp("ns"),
        "string": pa.large_string(),
        "float64": pa.float64(),
        "int64": pa.int64(),
    }
    return pa.schema([(c, types[FORECAST_DTYPES[c]]) for c in FORECAST_COLUMNS])


def conform_forecasts(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with exactly FORECAST_COLUMNS, in order, with FORECAST_DTYPES, sorted.

    Missing optional columns (`ACTUAL`, `ALPHA`) are added as NaN; any other missing column
    is an error, because a forecast without its coordinates is meaningless.
    """
    frame = frame.copy()
    for optional in ("ACTUAL", "ALPHA"):
        if optional not in frame.columns:
            frame[optional] = float("nan")
    missing = [c for c in FORECAST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"forecast table lacks columns {missing}")
    frame = frame[list(FORECAST_COLUMNS)].astype(FORECAST_DTYPES)
    return frame.sort_values(list(FORECAST_SORT), kind="stable").reset_index(drop=True)
