"""Recalibration of quantile forecasts from their own past errors, without look-ahead (pure).

DESIGN.md "Benchmarks, combination and recalibration". For one model, horizon h and level
tau, the calibrated forecast at origin T may use only the pairs (q_S, y_{S+h}) realized by T
(S + h <= T, in month indices) and q_T itself:

- `conformal`: q_T + Q_tau({e_S = y_{S+h} - q_S}) over the last `window` realized origins S
  (numpy's linear quantile); with fewer than `min_history` errors, q_T unchanged.
- `tracker`: q_T + theta_T, theta starting at 0 and absorbing, in the order of outcome months,
  `step * s_S * (tau - 1{y_{S+h} <= q_S + theta_S})` for every origin S realized by T, with
  `s_S` a scale known at S (SCALE: the std of the target over S's window). Before
  `min_history` updates have been absorbed the forecast is q_T unchanged (theta still tracks).

`pool="country"` runs each country on its own; `pool="panel"` pools the countries: conformal
takes every country's errors of the last `window` realized origin months, the tracker keeps
one theta updated with the mean of the countries' terms of an outcome month. The output rows
(MODEL = `<model>_cal`) are rearranged across quantiles like every forecast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.evaluation.combination import rearrange
from pipeline.schema import month_index

CAL_SUFFIX = "_cal"


@dataclass(frozen=True)
class CalibrationSettings:
    """The calibrator's settings (the typed `calibration` config group carries the same)."""

    method: Literal["conformal", "tracker"]
    step: float = 0.05
    window: int = 36
    pool: Literal["country", "panel"] = "country"
    min_history: int = 12


def _conformal(
    origin: np.ndarray, q: np.ndarray, y: np.ndarray, h: int, tau: float, s: CalibrationSettings
) -> np.ndarray:
    out = q.copy()
    error = y - q
    for t in np.unique(origin):
        realized = (origin + h <= t) & np.isfinite(error)
        months = np.unique(origin[realized])[-s.window :]
        errors = error[realized & np.isin(origin, months)]
        if errors.size >= max(s.min_history, 1):
            out[origin == t] = q[origin == t] + np.quantile(errors, tau)
    return out


def _tracker(
    origin: np.ndarray,
    q: np.ndarray,
    y: np.ndarray,
    scale: np.ndarray,
    h: int,
    tau: float,
    s: CalibrationSettings,
) -> np.ndarray:
    out = q.copy()
    times = np.unique(origin)  # for one h, outcome order = origin order
    theta_at = np.zeros(times.size)  # theta_S of each origin month S
    theta, absorbed, pending = 0.0, 0, 0
    for i, t in enumerate(times):
        while pending < i and times[pending] + h <= t:  # every S realized by t, in order
            rows = (origin == times[pending]) & np.isfinite(y)
            if rows.any():
                hit = (y[rows] <= q[rows] + theta_at[pending]).astype(np.float64)
                theta += s.step * float(np.mean(scale[rows] * (tau - hit)))
                absorbed += 1
            pending += 1
        theta_at[i] = theta
        if absorbed >= s.min_history:
            out[origin == t] = q[origin == t] + theta
    return out


def calibrate(
    frame: pd.DataFrame, settings: CalibrationSettings, scale: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Calibrated rows (MODEL = `<model>_cal`) for every model of `frame`, in its schema.

    `frame` holds every origin to calibrate and feed from (warm-up included) with ACTUAL;
    `scale` (COUNTRY, WINDOW_END, SCALE) gives the tracker's s_S (1 where absent or NaN).
    Rows without a FORECAST stay without one.
    """
    if settings.method not in ("conformal", "tracker"):
        raise ValueError(f"method must be 'conformal' or 'tracker'; got {settings.method!r}")
    if settings.pool not in ("country", "panel"):
        raise ValueError(f"pool must be 'country' or 'panel'; got {settings.pool!r}")
    rows = frame.loc[frame["FORECAST"].notna()].reset_index(drop=True)
    if scale is not None and not rows.empty:
        s = rows[["COUNTRY", "WINDOW_END"]].merge(scale, on=["COUNTRY", "WINDOW_END"], how="left")
        rows["_SCALE"] = s["SCALE"].fillna(1.0).to_numpy(np.float64)
    else:
        rows["_SCALE"] = 1.0
    by = ["MODEL", "HORIZON", "QUANTILE"] + (["COUNTRY"] if settings.pool == "country" else [])
    calibrated = rows["FORECAST"].to_numpy(np.float64).copy()
    for keys, part in rows.groupby(by, sort=True, observed=True):
        h, tau = int(keys[1]), float(keys[2])
        index = part.index.to_numpy()
        origin = month_index(part["WINDOW_END"])
        q = part["FORECAST"].to_numpy(np.float64)
        y = part["ACTUAL"].to_numpy(np.float64)
        if settings.method == "conformal":
            calibrated[index] = _conformal(origin, q, y, h, tau, settings)
        else:
            scale_s = part["_SCALE"].to_numpy(np.float64)
            calibrated[index] = _tracker(origin, q, y, scale_s, h, tau, settings)
    out = rows.drop(columns="_SCALE").assign(
        FORECAST=calibrated, MODEL=rows["MODEL"].astype(str) + CAL_SUFFIX
    )
    return rearrange(out)


def window_scale(panel: pd.DataFrame, size: int) -> pd.DataFrame:
    """SCALE = std (ddof 1) of the target `y` over each origin's window [T - size + 1, T],
    per country: (COUNTRY, WINDOW_END, SCALE); known at T (nothing after T enters)."""
    parts = []
    for country, one in panel.groupby("COUNTRY", sort=True, observed=True):
        one = one.sort_values("TIME")
        std = one["y"].rolling(size, min_periods=2).std()
        parts.append(pd.DataFrame({"COUNTRY": country, "WINDOW_END": one["TIME"], "SCALE": std}))
    if not parts:
        return pd.DataFrame(columns=["COUNTRY", "WINDOW_END", "SCALE"])
    out = pd.concat(parts, ignore_index=True)
    return out.astype({"COUNTRY": panel["COUNTRY"].dtype})
