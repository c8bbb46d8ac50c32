"""Upper-tail probabilities of the chi-squared, normal and Student t distributions, and Holm's
adjustment of a family of p-values.

The same numbers as `scipy.stats.chi2.sf`, `norm.sf` and `t.sf`, bit for bit (they call these
same `scipy.special` functions, after the argument and support checks repeated here), without
importing `scipy.stats`: its import (0.6 CPU-s, mostly building the docstrings of ~100
distributions) was a tenth of a small study's whole run (benchmarks/README.md, issue 18).
"""

from __future__ import annotations

import numpy as np
from scipy import special


def chi2_sf(x: float | np.ndarray, df: float | np.ndarray) -> np.floating | np.ndarray:
    """P(X > x) for X ~ chi-squared(df): 1 for x <= 0, NaN for df <= 0 or x NaN."""
    x, df = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(df, dtype=np.float64))
    inside = (df > 0) & (x > 0) & (x < np.inf)
    out = np.where(x <= 0, 1.0, 0.0)
    out[inside] = special.chdtrc(df[inside], x[inside])
    out[~(df > 0) | np.isnan(x)] = np.nan
    return out[()]


def norm_sf(x: float | np.ndarray) -> np.floating | np.ndarray:
    """P(Z > x) for a standard normal Z."""
    return special.ndtr(-np.asarray(x, dtype=np.float64))[()]


def t_sf(x: float | np.ndarray, df: float | np.ndarray) -> np.floating | np.ndarray:
    """P(T > x) for T ~ Student t(df): NaN for df <= 0 or x NaN."""
    x, df = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(df, dtype=np.float64))
    out = special.stdtr(df, -x)
    out = np.where(df > 0, out, np.nan)
    return out[()]


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm-adjusted p-values of a family: statsmodels' `multipletests(p, method="holm")[1]`,
    bit for bit (the same sort, products and running maximum; tests compare), without its
    import (0.5 CPU-s where nothing else loads statsmodels: a one-model study's coverage tests).

    The i-th smallest of m p-values times (m - i + 1), made non-decreasing in that order,
    capped at 1. NaN (a comparison without a test) stays NaN and is not counted in the family:
    a family of m finite p-values is adjusted as m tests; a family of one is its own adjustment.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    family = p[finite]
    order = np.argsort(family)  # multipletests' sort; ties get equal adjusted values anyway
    adjusted = np.maximum.accumulate(family[order] * np.arange(family.size, 0, -1))
    adjusted[adjusted > 1] = 1
    out[np.flatnonzero(finite)[order]] = adjusted
    return out
