"""Training windows of fits, from a prepared panel's dense month grid (pure: numpy).

`country_grid` lays the panel out as (country, month, column) (the panel as a DataFrame, or as
the Arrow columns probe and train read without pandas: pipeline.data.prepared.PanelColumns);
`window_arrays` stacks the windows of every (country, origin) (panel fits, and the grouping pass
of per-country fits);
`CountryWindows` keeps only each per-country fit's (country, origin) and builds its window
when a task needs it, with the same values (DESIGN.md "Definitions": nothing after the origin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.prepared import PanelColumns
from pipeline.schema import COUNTRY, TIME, month_index

if TYPE_CHECKING:  # the driver lays out a panel; a worker's task needs no pandas
    import pandas as pd

    Panel = pd.DataFrame | PanelColumns


@dataclass(frozen=True)
class CountryWindows:
    """Per-country fits' training windows, built on demand from the country grid.

    A study's windows overlap (60-month windows, monthly origins), so stacking every fit's
    window up front costs ~60 copies of the panel: 630 MiB on the driver for 106k ar_qr fits.
    Built per task from the grid instead, with values identical to window_arrays'.
    The groups of a study share its one grid (`columns` picks each group's): a copy of the
    grid per group cost ~0.3 CPU-s and ~230 MB at 10M rw fits.
    """

    grid: np.ndarray  # (C, M, n_features + H), or more columns (`columns`)
    m0: int
    size: int
    horizons: tuple[int, ...]
    n_features: int
    country: np.ndarray  # (F,) row of each fit in grid
    origin: np.ndarray  # (F,) month index of each fit's origin
    # the grid's columns the fits read (features, then targets), or None: all of them
    columns: tuple[int, ...] | None = None

    def _cells(self, country: np.ndarray, month: np.ndarray, upto: int | None = None) -> np.ndarray:
        """grid[country, month] of the fits' columns (the first `upto`), as one gather."""
        if self.columns is None:
            return self.grid[country, month, :upto]
        picked = np.asarray(self.columns[:upto], dtype=np.int64)
        return self.grid[country[..., None], month[..., None], picked]

    def values(self) -> np.ndarray:
        """(C, M, n_features + H): the grid's columns the fits read (a copy when shared)."""
        return self.grid if self.columns is None else self.grid[..., list(self.columns)]

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        ci, org = self.country[index], self.origin[index]
        hs = np.asarray(self.horizons, dtype=np.int64)
        n = self.size - int(hs.min())
        months = self.grid.shape[1]
        idx = (org - self.size + 1 - self.m0)[:, None] + np.arange(n)[None, :]  # (F, n)
        rows = self._cells(ci[:, None], idx.clip(0, months - 1))  # (F, n, k)
        rows[(idx < 0) | (idx >= months)] = np.nan
        X, y = rows[..., : self.n_features], rows[..., self.n_features :]
        known = np.arange(n)[:, None] <= (self.size - 1 - hs)[None, :]  # t + h <= T
        y = np.where(known, y, np.nan)[..., 0]  # one horizon per per-country group
        w = (np.isfinite(X).all(-1) & np.isfinite(y)).astype(np.float64)
        at = org - self.m0
        X_new = self._cells(ci, at.clip(0, months - 1), self.n_features)
        X_new[(at < 0) | (at >= months)] = np.nan
        return {
            "X": np.ascontiguousarray(X),
            "y": np.ascontiguousarray(y),
            "w": w,
            "X_new": np.ascontiguousarray(X_new[:, None, :]),
        }

    def part(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The fits `index` with only the grid rows and months they read, as plain arrays:
        `CountryWindows.from_part(part).take(np.arange(len(index)))` equals `take(index)`.

        A task's windows overlap (monthly origins share all but one row), so this is ~100x
        smaller than the windows themselves: what a worker is sent instead of them."""
        at = positions(index)
        ci, org = self.country[at], self.origin[at]
        # the grid rows the fits read, sorted, and each fit's place in them: np.unique(ci,
        # return_inverse=True) by a mark per grid row instead of a sort of the fits
        present = np.zeros(self.grid.shape[0], dtype=bool)
        present[ci] = True
        rows = np.flatnonzero(present)
        inverse = (np.cumsum(present) - 1)[ci]
        months = self.grid.shape[1]
        # every month a window reads, clipped to the grid (months outside it read NaN anyway)
        lo = int(np.clip(org.min() - self.size + 1 - self.m0, 0, months)) if org.size else 0
        hi = int(np.clip(org.max() - self.m0 + 1, lo, months)) if org.size else 0
        return {
            "grid": np.ascontiguousarray(
                self.grid[rows, lo:hi]
                if self.columns is None
                else self._cells(rows[:, None], np.arange(lo, hi)[None, :])
            ),
            "m0": np.int64(self.m0 + lo),
            "size": np.int64(self.size),
            "horizons": np.asarray(self.horizons, dtype=np.int64),
            "n_features": np.int64(self.n_features),
            "country": inverse.reshape(-1).astype(np.int64),
            "origin": org.astype(np.int64),
        }

    @classmethod
    def from_part(cls, part: dict[str, np.ndarray]) -> CountryWindows:
        return cls(
            np.asarray(part["grid"]),
            int(part["m0"]),
            int(part["size"]),
            tuple(int(h) for h in part["horizons"]),
            int(part["n_features"]),
            np.asarray(part["country"], dtype=np.int64),
            np.asarray(part["origin"], dtype=np.int64),
        )

    def fit_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        n, p, f8 = self.size - min(self.horizons), self.n_features, np.dtype(np.float64).str
        return {"X": ((n, p), f8), "y": ((n,), f8), "w": ((n,), f8), "X_new": ((1, p), f8)}


def positions(index: np.ndarray) -> slice | np.ndarray:
    """Positions `index` of a fit array as a slice where they are one run of consecutive
    positions (a task's fits mostly are): the fits' arrays are then taken as views, not
    copied element by element."""
    index = np.asarray(index, dtype=np.int64)
    if index.size and index[-1] - index[0] == index.size - 1 and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def grid_countries(panel: Panel) -> list[str]:
    """The country of each row of country_grid's grid, in order."""
    if isinstance(panel, PanelColumns):
        return panel.codes(COUNTRY)[0]
    return sorted(panel[COUNTRY].astype(str).unique())


def country_grid(panel: Panel, columns: Sequence[str]) -> tuple[list[str], int, np.ndarray]:
    """Dense month grid of `columns`: (countries, first month index, values (C, M, k)).

    Months a country has no row for are NaN, so a window reaching before a country's start
    simply holds NaN rows (masked later) instead of shifting.
    """
    missing = [c for c in (COUNTRY, TIME, *columns) if c not in panel.columns]
    if missing:
        raise ValueError(f"prepared panel lacks columns {missing}")
    if isinstance(panel, PanelColumns):
        countries, cidx = panel.codes(COUNTRY)
        months = panel.months()
    else:
        import pandas as pd

        countries = grid_countries(panel)
        months = month_index(panel[TIME])
        cidx = pd.Categorical(panel[COUNTRY].astype(str), categories=countries).codes
    m0, m1 = int(months.min()), int(months.max())
    C, M = len(countries), m1 - m0 + 1
    grid = np.full((C, M, len(columns)), np.nan)
    cells = grid.reshape(C * M, len(columns))  # a row per (country, month): a view
    at = np.asarray(cidx, dtype=np.int64) * M + (months - m0)
    for k, name in enumerate(columns):  # column by column: no panel-sized copy of them all
        if isinstance(panel, PanelColumns):
            cells[at, k] = panel.values(name)
        else:
            cells[at, k] = panel[name].to_numpy(dtype=np.float64)
    return countries, m0, grid


def window_arrays(
    grid: np.ndarray,
    m0: int,
    origins: np.ndarray,
    size: int,
    horizons: Sequence[int],
    n_features: int,
) -> dict[str, np.ndarray]:
    """Training windows for every (country, origin).

    grid (C, M, n_features + H) holds the features then the targets y_lead{h} for `horizons`.
    Rows are t = T - size + 1 .. T - min(horizons); the target for h is kept only where
    t + h <= T (DESIGN.md "Definitions": nothing after the origin). Returns X (C, O, n, p),
    y (C, O, n, H) (NaN where unavailable), w (C, O, n) (1 = features complete and some
    target available) and X_new (C, O, p), the features at the origin.
    """
    hs = np.asarray(horizons, dtype=np.int64)
    n = size - int(hs.min())
    first = origins - size + 1 - m0  # (O,) grid index of the window start
    idx = first[:, None] + np.arange(n)[None, :]  # (O, n)
    lo = min(0, int(idx.min()))
    hi = max(grid.shape[1], int(origins.max() - m0) + 1)
    pad = np.full((grid.shape[0], hi - lo, grid.shape[2]), np.nan)
    pad[:, -lo : -lo + grid.shape[1]] = grid
    rows = pad[:, idx - lo, :]  # (C, O, n, k)
    X, y = rows[..., :n_features], rows[..., n_features:]
    known = np.arange(n)[:, None] <= (size - 1 - hs)[None, :]  # (n, H): t + h <= T
    y = np.where(known, y, np.nan)
    complete = np.isfinite(X).all(-1) & np.isfinite(y).any(-1)
    X_new = pad[:, origins - m0 - lo, :n_features]  # (C, O, p)
    return {"X": X, "y": y, "w": complete.astype(np.float64), "X_new": X_new}
