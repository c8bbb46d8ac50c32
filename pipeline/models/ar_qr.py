"""Direct autoregressive quantile regression (`ar_qr`): exact LP fit, batched.

y_{t+h} is regressed on an intercept and the lags y_t, ..., y_{t-p+1} (the columns of X,
in that order) by unpenalized linear quantile regression, solved exactly by
`pipeline.models.quantile_linear.fit_quantile_lp` for all problems and quantiles at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from pipeline.io import read_npz, write_npz
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


class ARQR:
    """Autoregressive quantile regression estimator (one problem; batch core with B = 1).

    `fit(X, y)` takes X (n, p) = lags y_t..y_{t-p+1} and y (n,); `predict(X)` returns (m, Q)
    non-decreasing along Q. Fitted: `coef_` (Q, p + 1) intercept first, `crossing_`
    (crossing rate of the last `predict` before sorting).
    """

    def __init__(self, p: int = 12, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> None:
        self.p = p
        self.quantiles = quantiles

    def _check(self) -> tuple[int, tuple[float, ...]]:
        return int(P.check("p", self.p)), check_quantiles(self.quantiles)

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.p:
            raise ValueError(f"X must have shape (n, p={self.p}); got {X.shape}")
        return X

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> ARQR:
        """Fit all quantiles on (X (n, p), y (n,)); optional row weights (n,)."""
        _, qs = self._check()
        X = self._check_X(X)
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[None]
        y = np.asarray(y, dtype=np.float64)
        self.coef_ = fit_quantile_lp(_with_intercept(X)[None], y[None], qs, w)[0]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Quantile forecasts (m, Q), rearranged so they never cross."""
        raw = _with_intercept(self._check_X(X)) @ self.coef_.T
        self.crossing_ = float(crossing_rate_batch(raw[None])[0])
        return rearrange_quantiles(raw)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (for a safe .npz)."""
        return {
            "p": np.asarray(self.p),
            "quantiles": np.asarray(self.quantiles, dtype=np.float64),
            "coef_": np.asarray(self.coef_),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> ARQR:
        """Rebuild a fitted estimator from `to_arrays()` output."""
        model = cls(p=int(d["p"]), quantiles=tuple(float(q) for q in d["quantiles"]))
        model._check()
        model.coef_ = np.asarray(d["coef_"], dtype=np.float64)
        return model

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomic .npz write (no pickle)."""
        write_npz(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ARQR:
        return cls.from_arrays(read_npz(path))
