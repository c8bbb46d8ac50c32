"""The pinball decomposition's edge cases (its numbers: tests/test_assemble.py, on assemble's
output against a direct model_diagnostics call)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import decomposition
from pipeline.evaluation.decomposition import (
    decompose_pinball,
    pinball_decomposition,
    recalibrated_many,
)


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
    """The bisection's recalibration is exact: every term equals
    model_diagnostics' generalised PAV, including tied forecasts and actuals, constant
    forecasts and blocks of several levels (more rows than one block)."""
    from model_diagnostics.scoring import PinballLoss, decompose

    rng = np.random.default_rng(seed)
    for trial in range(40):
        n = int(rng.integers(2, 60)) if trial < 30 else int(rng.integers(300, 1500))
        tau = float(rng.choice([0.05, 0.1, 0.25, 0.5, 0.9, 1 / 3]))  # 1/3: float keys
        y = rng.normal(size=n).round(int(rng.integers(0, 3)))
        f = (y * rng.uniform(-1, 2) + rng.normal(size=n)).round(int(rng.integers(0, 3)))
        if trial % 7 == 0:
            f[:] = f[0]
        direct = decompose(y, f, scoring_function=PinballLoss(level=tau)).row(0, named=True)
        got = decompose_pinball(y, f, tau)
        for key in ("score", "miscalibration", "discrimination", "uncertainty"):
            assert got[key.upper()] == pytest.approx(direct[key], rel=1e-12, abs=1e-14), key


def _least_minimiser(y: list[int], f: list[int], tau: Fraction) -> list[Fraction]:
    """Brute force in exact arithmetic: every non-decreasing assignment of the actuals'
    values to the distinct forecasts, the pointwise least of those of least loss."""
    atoms = sorted(set(f))
    best, least = None, None
    for values in itertools.combinations_with_replacement(sorted(set(y)), len(atoms)):
        g = dict(zip(atoms, values, strict=True))
        loss = sum(max(tau * (a - g[b]), (tau - 1) * (a - g[b])) for a, b in zip(y, f, strict=True))
        if best is None or loss < best:
            best, least = loss, [g[b] for b in f]
        elif loss == best:
            least = [min(u, g[b]) for u, b in zip(least, f, strict=True)]
    return least


@pytest.mark.parametrize("tau", ["0.1", "0.25", "0.5", "0.9"])
def test_the_recalibration_is_the_least_isotonic_minimiser(tau):
    """Exact, ties included: the recalibrated forecasts equal a brute-force search's least
    minimiser (integer data, many ties of the loss)."""
    rng = np.random.default_rng(int(float(tau) * 100))
    for _ in range(60):
        n = int(rng.integers(1, 8))
        y = rng.integers(0, 4, n).tolist()
        f = rng.integers(0, 4, n).tolist()
        want = _least_minimiser(y, f, Fraction(tau))
        got = recalibrated_many(np.array(y, float), np.array(f, float), np.array([float(tau)]),
                                np.array([0, n]))  # fmt: skip
        assert got.tolist() == [float(v) for v in want], (y, f)


def test_many_groups_at_once_equal_each_alone(monkeypatch):
    """Groups batched together (and a batch limit below a group's size) give each group's
    own recalibration; a level with a long decimal expansion takes the float keys."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(0, 120, 40)
    edges = np.r_[0, np.cumsum(sizes)]
    y = rng.normal(size=edges[-1]).round(1)
    f = (y * 0.5 + rng.normal(size=edges[-1])).round(1)
    tau = rng.choice([0.05, 0.5, 0.9], 40)
    alone = [recalibrated_many(y[a:b], f[a:b], tau[i : i + 1], np.array([0, b - a]))
             for i, (a, b) in enumerate(itertools.pairwise(edges))]  # fmt: skip
    monkeypatch.setattr(decomposition, "_BATCH_ROWS", 300)
    assert np.array_equal(recalibrated_many(y, f, tau, edges), np.concatenate(alone))
    tau[5] = 1 / 3  # 3333333333333333 / 10**16: float keys for that batch
    got = recalibrated_many(y, f, tau, edges)
    a, b = edges[5], edges[6]
    direct = decompose_pinball(y[a:b], f[a:b], 1 / 3)
    u = y[a:b] - got[a:b]
    recalibrated = np.mean(np.maximum(u / 3, (1 / 3 - 1) * u))
    assert recalibrated == pytest.approx(direct["SCORE"] - direct["MISCALIBRATION"], rel=1e-12)
    assert np.all(np.diff(got[a:b][np.argsort(f[a:b], kind="stable")]) >= 0)
