"""evaluation/pvalues.py: scipy.stats' upper tails, bit for bit, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.pvalues import chi2_sf, norm_sf, t_sf

X = np.array([-np.inf, -3.0, -1e-16, 0.0, 1e-300, 1e-8, 0.3, 1.7, 5.2, 33.0, 900.0, np.inf, np.nan])
rng = np.random.default_rng(0)
X = np.concatenate([X, rng.exponential(4.0, 200), rng.normal(0.0, 3.0, 200)])
DF = [-1.0, 0.0, 0.5, 1, 2, 3, 7, 70.0, np.nan]


def _same(ours, theirs) -> bool:
    return np.array_equal(np.asarray(ours), np.asarray(theirs), equal_nan=True)


@pytest.mark.parametrize("df", DF)
def test_chi2_and_t_equal_scipy_stats_bitwise(df):
    assert _same(chi2_sf(X, df), stats.chi2.sf(X, df))
    assert _same(t_sf(X, df), stats.t.sf(X, df=df))


def test_norm_equals_scipy_stats_bitwise_and_scalars_stay_scalars():
    assert _same(norm_sf(X), stats.norm.sf(X))
    for x in (-2.0, 0.0, 1.3, np.inf, np.nan):
        for ours, theirs in (
            (chi2_sf(x, 2), stats.chi2.sf(x, 2)),
            (norm_sf(x), stats.norm.sf(x)),
            (t_sf(x, 5), stats.t.sf(x, df=5)),
        ):
            assert np.ndim(ours) == 0 and isinstance(float(ours), float)
            assert _same(ours, theirs)
    # broadcast over an array of degrees of freedom, as the coverage tests' tables do
    df = np.array([1, 2, 3, 1, 0])
    x = np.array([0.5, 2.0, -1.0, np.nan, 1.0])
    assert _same(chi2_sf(x, df), stats.chi2.sf(x, df))
