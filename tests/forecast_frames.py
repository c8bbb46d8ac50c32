"""Forecast-table rows for the tests' hand-made frames: one block per (country, model, level,
horizon) over the origins `ends`, in the table's columns (pipeline.schema), each fit's window
the 12 months up to its origin."""

from __future__ import annotations

from typing import Any

import pandas as pd


def forecast_block(
    ends: pd.DatetimeIndex,
    *,
    country: str,
    model: str,
    level: float,
    horizon: int,
    forecast: Any,
    actual: Any,
    **extra: Any,
) -> pd.DataFrame:
    """The rows of one block; `extra` adds columns (ALPHA, ...) after ACTUAL."""
    return pd.DataFrame(
        {
            "TIME": ends + pd.DateOffset(months=horizon),
            "COUNTRY": country,
            "TARGET": "y",
            "MODEL": model,
            "QUANTILE": level,
            "HORIZON": horizon,
            "WINDOW_START": ends - pd.DateOffset(months=11),
            "WINDOW_END": ends,
            "FORECAST": forecast,
            "ACTUAL": actual,
            **extra,
        }
    )
