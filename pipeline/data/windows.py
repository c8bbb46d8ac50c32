"""Rolling-window origins and training ranges (pure; DESIGN.md "Definitions").

A window of `size` months ends at the origin T: WINDOW_START = T - size + 1, WINDOW_END = T.
Training pairs for horizon h are (features_t, y_{t+h}) for WINDOW_START <= t <= T - h, so no
training target lies after the origin. The forecast for T + h uses the features at T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import RollingWindowConfig
from pipeline.schema import month_index, month_start

if TYPE_CHECKING:  # month_start makes the stamps; the fit plan takes origin_months (no pandas)
    import pandas as pd


def add_months(stamp: pd.Timestamp | str, months: int) -> pd.Timestamp:
    return month_start(month_index(stamp) + months)


@dataclass(frozen=True)
class TrainRange:
    """The months one fit may use. Every date is a month start."""

    origin: pd.Timestamp  # T = WINDOW_END
    window_start: pd.Timestamp  # T - size + 1
    horizon: int
    first_t: pd.Timestamp  # first feature month of a training pair (= window_start)
    last_t: pd.Timestamp  # last feature month: T - h, so its target y_{T} is known at T
    forecast_time: pd.Timestamp  # T + h, the month the forecast is for

    @property
    def n_pairs(self) -> int:
        return month_index(self.last_t) - month_index(self.first_t) + 1


def origins(window: RollingWindowConfig) -> list[pd.Timestamp]:
    """Every fitted origin: the warm-up ones (see warmup_origins), then the scored ones."""
    return [month_start(m) for m in origin_months(window)]


def origin_months(window: RollingWindowConfig) -> list[int]:
    """`origins` as month indexes (pipeline.schema.month_index)."""
    return [*_warmup_months(window), *_scored_months(window)]


def scored_origins(window: RollingWindowConfig) -> list[pd.Timestamp]:
    """Forecast origins from start_date to end_date (inclusive) every `step` months."""
    return [month_start(m) for m in _scored_months(window)]


def _scored_months(window: RollingWindowConfig) -> list[int]:
    first, last = month_index(window.start_date), month_index(window.end_date)
    return list(range(first, last + 1, window.step))


def warmup_origins(window: RollingWindowConfig) -> list[pd.Timestamp]:
    """Calibration warm-up origins: start_date - k * step for k >= 1, back to
    calibration_start (the same grid as the scored origins); none when it is null."""
    return [month_start(m) for m in _warmup_months(window)]


def _warmup_months(window: RollingWindowConfig) -> list[int]:
    if window.calibration_start is None:
        return []
    first, start = month_index(window.calibration_start), month_index(window.start_date)
    return list(range(start - window.step, first - 1, -window.step))[::-1]


def training_range(origin: pd.Timestamp | str, size: int, horizon: int) -> TrainRange:
    """The training range of the fit at `origin` for `horizon` with a window of `size` months."""
    if size < 1 or horizon < 1:
        raise ValueError(f"size and horizon must be >= 1; got size={size}, horizon={horizon}")
    if horizon >= size:
        raise ValueError(f"horizon {horizon} leaves no training pair in a {size}-month window")
    t = month_index(origin)
    return TrainRange(
        origin=month_start(t),
        window_start=month_start(t - size + 1),
        horizon=horizon,
        first_t=month_start(t - size + 1),
        last_t=month_start(t - horizon),
        forecast_time=month_start(t + horizon),
    )


def required_history(window: RollingWindowConfig, max_lag: int) -> pd.Timestamp:
    """First month whose value the earliest fit needs (its window start minus the longest lag)."""
    return add_months(origins(window)[0], -(window.size - 1) - max_lag)
