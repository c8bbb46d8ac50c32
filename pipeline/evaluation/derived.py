"""Forecast rows derived from the train tables without refitting (pure): the combination
`combo` and the recalibrated `<model>_cal` rows, then the split into scored and warm-up rows.

Order matters and is fixed here: combo is built from the raw members, every model (combo
included) is recalibrated from its own rows over every origin (warm-up included), and only
then are the warm-up origins (before `score_from`) dropped, so they feed the calibrators but
are never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from pipeline.evaluation.calibration import CalibrationSettings, calibrate
from pipeline.evaluation.combination import COMBO, combine


@dataclass(frozen=True)
class DerivedSettings:
    combo_members: Sequence[str] | None = None  # None: no combo
    combo_method: str = "mean"
    calibration: CalibrationSettings | None = None  # None: no _cal rows
    score_from: pd.Timestamp | None = None  # first scored origin (start_date); None: all


def derive(
    frame: pd.DataFrame, settings: DerivedSettings, scale: pd.DataFrame | None = None
) -> pd.DataFrame:
    """`frame` plus the combo and calibrated rows, restricted to the scored origins."""
    parts = [frame]
    if settings.combo_members:
        combo = combine(frame, settings.combo_members, method=settings.combo_method)  # type: ignore[arg-type]
        if not combo.empty:
            parts.append(combo)
    if settings.calibration is not None:
        cal = calibrate(pd.concat(parts, ignore_index=True), settings.calibration, scale)
        if not cal.empty:
            parts.append(cal)
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else frame
    if settings.score_from is not None:
        out = out.loc[out["WINDOW_END"] >= settings.score_from]
    return out.reset_index(drop=True)


__all__ = ["COMBO", "DerivedSettings", "derive"]
