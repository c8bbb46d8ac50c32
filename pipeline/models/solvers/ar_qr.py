"""Direct autoregressive quantile regression (`ar_qr`): exact LP fit, batched.

y_{t+h} is regressed on an intercept and the lags y_t, ..., y_{t-p+1} (the columns of X,
in that order) by unpenalized linear quantile regression, solved exactly by
`pipeline.models.solvers.quantile_linear.fit_quantile_lp` for all problems and quantiles at once.

Imports: numpy and solvers/ (common, quantile_linear, rules); never torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.models.solvers.common import crossing_rate_batch, rearrange_quantiles
from pipeline.models.solvers.quantile_linear import fit_quantile_lp
from pipeline.models.solvers.rules import check_quantiles


def with_intercept(X: np.ndarray) -> np.ndarray:
    """X (..., p) with a column of ones first (..., p + 1)."""
    return np.concatenate([np.ones((*X.shape[:-1], 1)), X], axis=-1)


def fit_predict_ar_qr_batch(
    X: np.ndarray,
    y: np.ndarray,
    X_new: np.ndarray,
    quantiles: Sequence[float],
    w: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit B AR quantile regressions and forecast.

    X (B, n, p) lag columns y_t..y_{t-p+1}, y (B, n), X_new (B, m, p), w (B, n) row weights
    (0 = padding). Returns pred (B, m, Q) sorted along Q, crossing (B,) fraction of the m
    forecasts that crossed before sorting, coef (B, Q, p + 1) with the intercept first.
    """
    qs = check_quantiles(quantiles)
    X = np.asarray(X, dtype=np.float64)
    X_new = np.asarray(X_new, dtype=np.float64)
    if X.ndim != 3 or X.shape[2] < 1:
        raise ValueError(f"X must have shape (B, n, p) with p >= 1; got {X.shape}")
    if X_new.ndim != 3 or X_new.shape[0] != X.shape[0] or X_new.shape[2] != X.shape[2]:
        raise ValueError(
            f"X_new must have shape (B, m, p) = ({X.shape[0]}, m, {X.shape[2]}); got {X_new.shape}"
        )
    coef = fit_quantile_lp(with_intercept(X), y, qs, w)
    raw = with_intercept(X_new) @ coef.transpose(0, 2, 1)  # (B, m, Q)
    return rearrange_quantiles(raw), crossing_rate_batch(raw), coef
