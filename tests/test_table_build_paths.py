"""The train table's build takes shortcuts where a study's rows allow them
(runtime/fits/forecast_rows.py, forecast_columns.py, kept_forecasts.py); each must give what
the general path gives: the three timestamps of a chunk from one index, a result's
consecutive rows copied as a slice rather than gathered, a per-country group's fits
listed without a 2-D nonzero.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_forecast_blocks import random_study

import pipeline.runtime.fits.forecast_rows as forecast_rows
from pipeline.runtime.fits.forecast_columns import Stamps
from pipeline.runtime.fits.kept_forecasts import KeptForecasts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_equal_three_stamps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    made, each = Stamps(), Stamps()
    for size, lo, hi, hmax in ((24, 24000, 24100, 12), (1, 23900, 23950, 0), (60, 24200, 24400, 3)):
        origin = rng.integers(lo, hi, 200)
        horizon = rng.integers(0, hmax + 1, 200)
        got = made.windows(origin, horizon, size)
        want = (each(origin + horizon), each(origin - size + 1), each(origin))
        assert all(a.equals(b) for a, b in zip(got, want, strict=True))
    # what no study has (a negative horizon, an empty window, no rows): the general path
    origin, horizon = np.array([24000, 24010]), np.array([-30, 2])
    for size in (0, 5):
        got = made.windows(origin, horizon, size)
        want = (each(origin + horizon), each(origin - size + 1), each(origin))
        assert all(a.equals(b) for a, b in zip(got, want, strict=True))
    none = np.zeros(0, dtype=np.int64)
    assert [len(a) for a in made.windows(none, none, 12)] == [0, 0, 0]


@pytest.mark.parametrize("C", [1, 3])
def test_consecutive_rows_are_taken_as_the_gather_takes_them(C: int) -> None:
    """A result's rows at consecutive places are read as a slice (the result's own rows when
    one result holds them all); any other order (the same ends, rows swapped inside) is
    gathered; all equal numpy's indexing."""
    rng = np.random.default_rng(C)
    F, H, Q = 40, 2, 3
    pred, alpha = rng.normal(size=(F, C, H, Q)), rng.normal(size=(F, Q))
    kept = KeptForecasts([(F, C, H)], Q)
    kept.add(0, np.arange(F), pred + 1.0, alpha + 1.0)  # then all again, in two results
    kept.add(0, np.arange(F // 2), pred[: F // 2], alpha[: F // 2])
    kept.add(0, np.arange(F // 2, F), pred[F // 2 :], alpha[F // 2 :])
    cols = np.zeros(8, dtype=np.int64) if C == 1 else rng.integers(0, C, 8)
    for first in (5, 16):  # in one result (its rows, read-only), across two (copied)
        for fit in (np.arange(8), np.array([0, 2, 1, 3, 4, 5, 6, 7]), np.arange(7, -1, -1)):
            p, a = kept.take(0, first + fit, cols)
            np.testing.assert_array_equal(p, pred[first + fit, cols])
            np.testing.assert_array_equal(a, alpha[first + fit])


def test_per_country_fits_without_a_forecast_row_are_left_out() -> None:
    """A per-country group's fits whose one row is marked absent give no forecast rows: the
    same pairs as a 2-D nonzero over the rows gives."""
    (groups, _, _, have, config, _, _), _ = random_study("rw", 0)
    g = groups[0]
    assert g.rows.shape[1] == 1
    masked = copy.copy(g)
    rows = g.rows.copy()
    rows[::3, 0] = False
    object.__setattr__(masked, "rows", rows)
    Q = len(config.data.quantiles)
    got = forecast_rows._RowsByCountry([masked, *groups[1:]], have, Q)
    fits = np.flatnonzero(have[0])
    fr, _ = np.nonzero(rows[fits])
    want = np.sort(fits[fr])  # one country's fits in a row: the order the ranks give
    np.testing.assert_array_equal(np.sort(got.fit[0]), want)
    assert got.fit[0].size == want.size < fits.size
    np.testing.assert_array_equal(got.col[0], 0)
    assert got.per_rank.sum() == sum(
        f.size * len(grp.horizons) * Q for f, grp in zip(got.fit, groups, strict=True)
    )
