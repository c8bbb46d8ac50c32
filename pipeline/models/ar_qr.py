"""Direct autoregressive quantile regression (`ar_qr`): exact LP fit, batched.

y_{t+h} is regressed on an intercept and the lags y_t, ..., y_{t-p+1} (the columns of X,
in that order) by unpenalized linear quantile regression, solved exactly by
`pipeline.models.quantile_linear.fit_quantile_lp` for all problems and quantiles at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from pipeline.io import read_npz, write_npz
from pipeline.models._sklearn import QuantileEstimator
from pipeline.models.common import crossing_rate_batch, rearrange_quantiles
from pipeline.models.parameters import P
from pipeline.models.quantile_linear import fit_quantile_lp
from pipeline.models.rules import check_quantiles


def _with_intercept(X: np.ndarray) -> np.ndarray:
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
    coef = fit_quantile_lp(_with_intercept(X), y, qs, w)
    raw = _with_intercept(X_new) @ coef.transpose(0, 2, 1)  # (B, m, Q)
    return rearrange_quantiles(raw), crossing_rate_batch(raw), coef


class ARQR(QuantileEstimator):
    """Autoregressive quantile regression, a scikit-learn estimator (one problem; batch core B = 1).

    `fit(X, y)` takes X (n, d) = lags y_t, y_{t-1}, ... (d >= p; the first p columns are the
    regressors, so one lag matrix serves a grid over p) and y (n,); `predict(X)` returns (m, Q)
    non-decreasing along Q. Fitted: `coef_` (Q, p + 1) intercept first, `n_features_in_`.
    """

    def __init__(self, *, p: int = 12, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> None:
        self.p = p
        self.quantiles = quantiles

    def _check(self) -> tuple[int, tuple[float, ...]]:
        return int(P.check("p", self.p)), check_quantiles(self.quantiles)

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> ARQR:
        """Fit all quantiles on (X (n, d >= p), y (n,)); optional row weights (n,)."""
        p, qs = self._check()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        if X.shape[1] < p:
            raise ValueError(f"X must have at least p={p} lag columns; got {X.shape[1]}")
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X)[None]
        self.coef_ = fit_quantile_lp(_with_intercept(X[:, :p])[None], y[None], qs, w)[0]
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return _with_intercept(X[:, : self.coef_.shape[1] - 1]) @ self.coef_.T

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Quantile forecasts (m, Q), rearranged so they never cross."""
        return rearrange_quantiles(self._raw(X))

    def crossing_rate(self, X: np.ndarray) -> float:
        """Fraction of the rows of X whose raw quantiles cross (before `predict` sorts them)."""
        return float(crossing_rate_batch(self._raw(X)[None])[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (for a safe .npz)."""
        check_is_fitted(self)
        return {
            "p": np.asarray(self.p),
            "quantiles": np.asarray(self.quantiles, dtype=np.float64),
            "coef_": np.asarray(self.coef_),
            "n_features_in_": np.asarray(self.n_features_in_),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> ARQR:
        """Rebuild a fitted estimator from `to_arrays()` output."""
        model = cls(p=int(d["p"]), quantiles=tuple(float(q) for q in d["quantiles"]))
        model._check()
        model.coef_ = np.asarray(d["coef_"], dtype=np.float64)
        model.n_features_in_ = int(d["n_features_in_"]) if "n_features_in_" in d else model.p
        return model

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomic .npz write (no pickle)."""
        write_npz(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ARQR:
        return cls.from_arrays(read_npz(path))
