"""The pinball decomposition's edge cases (its numbers: tests/test_assemble.py, on assemble's
output against a direct model_diagnostics call)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.decomposition import decompose_pinball, pinball_decomposition


def test_a_calibrated_constant_forecast_has_no_miscalibration_nor_discrimination():
    y = np.arange(1.0, 11.0)
    got = decompose_pinball(y, np.full(10, 5.0), 0.5)  # 5 is a median of 1..10
    assert got["MISCALIBRATION"] == pytest.approx(0.0, abs=1e-12)
    assert got["DISCRIMINATION"] == pytest.approx(0.0, abs=1e-12)
    # mean of 0.5 |y - 5| over y = 1..10
    assert got["SCORE"] == pytest.approx(got["UNCERTAINTY"]) == pytest.approx(1.25)


def test_empty_and_bad_input():
    assert all(math.isnan(v) for v in decompose_pinball(np.empty(0), np.empty(0), 0.1).values())
    with pytest.raises(ValueError, match="one shape"):
        decompose_pinball(np.zeros(3), np.zeros(2), 0.1)
    with pytest.raises(ValueError, match="tau"):
        decompose_pinball(np.zeros(3), np.zeros(3), 1.0)


def test_unscored_rows_are_left_out_and_no_scored_row_gives_an_empty_table():
    frame = pd.DataFrame(
        {
            "MODEL": "m",
            "COUNTRY": ["A", "A", "B", "B"],
            "HORIZON": 1,
            "QUANTILE": 0.5,
            "WINDOW_END": pd.to_datetime(["2020-01-01", "2020-02-01"] * 2),
            "FORECAST": [1.0, 2.0, np.nan, 3.0],
            "ACTUAL": [1.5, np.nan, 0.0, 2.0],
        }
    )
    table = pinball_decomposition(frame)
    assert table["N"].tolist() == [2]  # (A, 2020-01) and (B, 2020-02)
    direct = decompose_pinball(np.array([1.5, 2.0]), np.array([1.0, 3.0]), 0.5)
    assert table["SCORE"].item() == pytest.approx(direct["SCORE"]) == pytest.approx(0.375)
    empty = pinball_decomposition(frame.assign(ACTUAL=np.nan))
    assert empty.empty and list(empty.columns) == list(table.columns)


@pytest.mark.parametrize("seed", range(4))
def test_equals_model_diagnostics_on_random_data_with_ties(seed):
    """The threshold-decomposition recalibration is exact: every term equals
    model_diagnostics' generalised PAV, including tied forecasts and actuals, constant
    forecasts and blocks of several levels (more rows than one block)."""
    from model_diagnostics.scoring import PinballLoss, decompose

    rng = np.random.default_rng(seed)
    for trial in range(40):
        n = int(rng.integers(2, 60)) if trial < 30 else int(rng.integers(300, 1500))
        tau = float(rng.choice([0.05, 0.1, 0.25, 0.5, 0.9]))
        y = rng.normal(size=n).round(int(rng.integers(0, 3)))
        f = (y * rng.uniform(-1, 2) + rng.normal(size=n)).round(int(rng.integers(0, 3)))
        if trial % 7 == 0:
            f[:] = f[0]
        direct = decompose(y, f, scoring_function=PinballLoss(level=tau)).row(0, named=True)
        got = decompose_pinball(y, f, tau)
        for key in ("score", "miscalibration", "discrimination", "uncertainty"):
            assert got[key.upper()] == pytest.approx(direct[key], rel=1e-12, abs=1e-14), key
