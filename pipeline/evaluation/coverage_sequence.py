"""Coverage (backtesting) tests on one hit sequence: the definitions (pure).

A *hit* is `1{y <= F}` (the convention of `metrics.coverage`); for a correct tau-quantile the
hits are i.i.d. Bernoulli(tau). Each test returns `(statistic, p_value)`; `0 * log(0)` is 0.

- Kupiec (1995) unconditional coverage:
  `LR_uc = -2 [ n0 ln(1 - tau) + n1 ln(tau) - n0 ln(1 - pi) - n1 ln(pi) ]`, `pi = n1 / n`,
  chi-square(1). Defined for any n >= 1 (no hits or all hits included); n = 0 gives NaN.
- Christoffersen (1998) independence, first-order Markov alternative:
  `LR_ind = -2 [ (n00 + n10) ln(1 - pi) + (n01 + n11) ln(pi)
                 - n00 ln(1 - pi01) - n01 ln(pi01) - n10 ln(1 - pi11) - n11 ln(pi11) ]`
  with `n_ij` the transitions i -> j, `pi01 = n01 / (n00 + n01)`, `pi11 = n11 / (n10 + n11)`,
  `pi = (n01 + n11) / (n - 1)`; chi-square(1). When a state never occurs among the first
  n - 1 hits (no hits, all hits, one hit at the very end), its transition probability never
  enters the Markov likelihood (0 log 0 = 0, as everywhere here), the two models' maxima
  coincide and LR_ind = 0 (p-value 1), as MATLAB's `varbacktest` (cci) gives for zero
  counts; only n < 2 (no transition) gives NaN. So a level never hit still fails the
  conditional-coverage test through its LR_uc, rather than leaving it undefined.
- Conditional coverage: `LR_cc = LR_uc + LR_ind`, chi-square(2) (Christoffersen's usual
  decomposition; NaN when LR_ind is).
- Engle and Manganelli (2004) dynamic quantile: `Hit_t = 1{y_t <= F_t} - tau` regressed on a
  constant, `Hit_{t-1..t-lags}` and `F_t` over t = lags+1..n;
  `DQ = Hit' X (X'X)^+ X' Hit / (tau (1 - tau))`, chi-square with rank(X) degrees of freedom
  (the number of regressors, lags + 2, unless they are collinear, e.g. a constant forecast).
  NaN with fewer usable rows than regressors + 1.

These functions take one sequence in time order; `coverage_tests.coverage_tests` computes the
same statistics for every group of a forecast table at once (its tests compare the two).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import xlogy

from pipeline.evaluation.pvalues import chi2_sf

DQ_LAGS = 4
NAN_RESULT = (math.nan, math.nan)


def _check_hits(hits: Sequence[int] | np.ndarray) -> np.ndarray:
    h = np.asarray(hits)
    if h.ndim != 1:
        raise ValueError(f"hits must be a 1-D sequence of 0/1; got shape {h.shape}")
    if h.size and not np.isin(h, (0, 1, True, False)).all():
        raise ValueError("hits must hold only 0 and 1")
    return h.astype(np.float64)


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie in (0, 1); got {tau}")
    return tau


def _bernoulli_loglik(ones: float, zeros: float, p: float) -> float:
    return float(xlogy(ones, p) + xlogy(zeros, 1.0 - p))


def kupiec(hits: Sequence[int] | np.ndarray, tau: float) -> tuple[float, float]:
    """Kupiec's unconditional coverage LR statistic and its chi-square(1) p-value."""
    h, tau = _check_hits(hits), _check_tau(tau)
    n = h.size
    if n == 0:
        return NAN_RESULT
    n1 = float(h.sum())
    n0 = n - n1
    stat = -2.0 * (_bernoulli_loglik(n1, n0, tau) - _bernoulli_loglik(n1, n0, n1 / n))
    stat = max(stat, 0.0)
    return stat, float(chi2_sf(stat, 1))


def _transitions(h: np.ndarray) -> np.ndarray:
    """Counts (n00, n01, n10, n11) of the transitions i -> j of one hit sequence."""
    prev, cur = h[:-1], h[1:]
    return np.array([((prev == a) & (cur == b)).sum() for a in (0, 1) for b in (0, 1)], float)


def _share(part: float, whole: float) -> float:
    """part / whole, 0 for a state never seen (its counts are 0: its terms vanish)."""
    return part / whole if whole else 0.0


def _independence(counts: np.ndarray) -> tuple[float, float]:
    n00, n01, n10, n11 = (float(c) for c in counts)
    if n00 + n01 + n10 + n11 == 0:
        return NAN_RESULT
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    restricted = _bernoulli_loglik(n01 + n11, n00 + n10, pi)
    markov = _bernoulli_loglik(n01, n00, _share(n01, n00 + n01)) + _bernoulli_loglik(
        n11, n10, _share(n11, n10 + n11)
    )
    stat = max(-2.0 * (restricted - markov), 0.0)
    return stat, float(chi2_sf(stat, 1))


def christoffersen_independence(hits: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """Christoffersen's independence LR statistic and its chi-square(1) p-value."""
    h = _check_hits(hits)
    if h.size < 2:
        return NAN_RESULT
    return _independence(_transitions(h))


def christoffersen_conditional(hits: Sequence[int] | np.ndarray, tau: float) -> tuple[float, float]:
    """Conditional coverage LR_cc = LR_uc + LR_ind and its chi-square(2) p-value."""
    uc, _ = kupiec(hits, tau)
    ind, _ = christoffersen_independence(hits)
    if math.isnan(uc) or math.isnan(ind):
        return NAN_RESULT
    stat = uc + ind
    return stat, float(chi2_sf(stat, 2))


def dq_test(
    hits: Sequence[int] | np.ndarray,
    forecast: Sequence[float] | np.ndarray,
    tau: float,
    lags: int = DQ_LAGS,
) -> tuple[float, float]:
    """Engle-Manganelli DQ statistic (constant, `lags` lagged hits, the forecast) and p-value."""
    h, tau = _check_hits(hits), _check_tau(tau)
    f = np.asarray(forecast, dtype=np.float64)
    if f.shape != h.shape:
        raise ValueError(f"forecast must match hits' shape {h.shape}; got {f.shape}")
    x, target = _dq_design(h, f, tau, lags)
    return _dq(x, target, tau)


def _dq_design(
    h: np.ndarray, f: np.ndarray, tau: float, lags: int = DQ_LAGS
) -> tuple[np.ndarray, np.ndarray]:
    """DQ regressors (constant, lagged demeaned hits, forecast) and target of one sequence."""
    if h.size <= lags:  # no row has all its lags (and no negative index may wrap around)
        return np.empty((0, lags + 2)), np.empty(0)
    demeaned = h - tau
    n_rows = h.size - lags
    columns = [np.ones(n_rows)]
    columns += [demeaned[lags - k : h.size - k] for k in range(1, lags + 1)]
    columns.append(f[lags:])
    return np.column_stack(columns), demeaned[lags:]


def _dq(x: np.ndarray, target: np.ndarray, tau: float) -> tuple[float, float]:
    if len(target) < x.shape[1] + 1:
        return NAN_RESULT
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    fitted = x @ coef
    stat = float(fitted @ fitted) / (tau * (1.0 - tau))
    return stat, float(chi2_sf(stat, int(np.linalg.matrix_rank(x))))


def coverage_test_row(hits: np.ndarray, forecast: np.ndarray, tau: float) -> dict[str, float | int]:
    """Every test on one hit sequence (in time order): N, HIT_RATE and each STAT/P pair."""
    uc = kupiec(hits, tau)
    ind = christoffersen_independence(hits)
    cc = christoffersen_conditional(hits, tau)
    dq = dq_test(hits, forecast, tau)
    return {
        "N": len(hits),
        "HIT_RATE": float(np.mean(hits)) if len(hits) else math.nan,
        "LR_UC": uc[0],
        "P_UC": uc[1],
        "LR_IND": ind[0],
        "P_IND": ind[1],
        "LR_CC": cc[0],
        "P_CC": cc[1],
        "DQ": dq[0],
        "P_DQ": dq[1],
    }
