"""Benchmark forecasts, batched over fits (pure numpy; DESIGN.md "Benchmarks, combination").

Both read the fits' training pairs as the runtime stacks them: X (B, n, p) whose first column
is y_lag0 (= y_t), y (B, n) the target y_{t+h}, w (B, n) the row mask (0 = padding or an
incomplete row) and X_new (B, 1, p) the features at the origin T. Empirical quantiles are
numpy's default (linear interpolation), taken over the rows with w > 0 and a finite target.

- `rw` (no change + the window's h-month changes): q_T = y_T + Q_tau({y_{t+h} - y_t})
- `climatology`: q_T = Q_tau({y_{t+h}})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from pipeline.models._sklearn import QuantileEstimator
from pipeline.models.rules import check_quantiles
from pipeline.models.spec import Adapter
from pipeline.schema import lag_column


def _masked(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.where((np.asarray(w) > 0) & np.isfinite(values), values, np.nan)


def _check(X: np.ndarray, y: np.ndarray, w: np.ndarray, X_new: np.ndarray) -> None:
    if X.ndim != 3 or y.shape != X.shape[:2] or w.shape != y.shape:
        raise ValueError(
            f"X must be (B, n, p) with y and w (B, n); got {X.shape}, {y.shape}, {w.shape}"
        )
    if X_new.shape[0] != X.shape[0] or X_new.shape[-1] != X.shape[-1]:
        raise ValueError(f"X_new must be (B, m, p) matching X {X.shape}; got {X_new.shape}")


def _quantiles(values: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """(B, Q) linear-interpolation quantiles over axis 1, ignoring NaN (NaN if all are)."""
    q = np.asarray(quantiles, dtype=np.float64)
    empty = ~np.isfinite(values).any(axis=1)
    filled = np.where(empty[:, None], 0.0, values)  # keeps nanquantile quiet on empty rows
    out = np.nanquantile(filled, q, axis=1).T  # (B, Q)
    out[empty] = np.nan
    return out


def fit_predict_rw_batch(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, X_new: np.ndarray, quantiles: Sequence[float]
) -> np.ndarray:
    """Random-walk benchmark: (B, m, Q) forecasts y_T + Q_tau(y_{t+h} - y_t)."""
    X, y, w, X_new = (np.asarray(a, dtype=np.float64) for a in (X, y, w, X_new))
    _check(X, y, w, X_new)
    changes = _masked(y - X[:, :, 0], w)
    return X_new[:, :, :1] + _quantiles(changes, quantiles)[:, None, :]


def fit_predict_climatology_batch(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, X_new: np.ndarray, quantiles: Sequence[float]
) -> np.ndarray:
    """Climatology benchmark: (B, m, Q) forecasts Q_tau(y_{t+h}), the same for every row."""
    X, y, w, X_new = (np.asarray(a, dtype=np.float64) for a in (X, y, w, X_new))
    _check(X, y, w, X_new)
    levels = _quantiles(_masked(y, w), quantiles)
    return np.broadcast_to(levels[:, None, :], (X.shape[0], X_new.shape[1], levels.shape[1])).copy()


def training_pairs(w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) number of training pairs each fit used."""
    return np.isfinite(_masked(np.asarray(y, dtype=np.float64), w)).sum(axis=1)


class _Benchmark(QuantileEstimator):
    """A parameter-free benchmark as a scikit-learn estimator: the batch kernel with B = 1.

    `fit(X, y)` takes X (n, d) with column 0 = y_t and y (n,) the target y_{t+h} (optional
    row weights: 0 leaves a row out); `predict(X)` returns (m, Q).
    """

    def __init__(self, *, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> None:
        self.quantiles = quantiles

    def _values(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None):
        qs = check_quantiles(self.quantiles)
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        w = _check_sample_weight(sample_weight, X)
        self.quantiles_ = _quantiles(_masked(self._values(X, y), w)[None], qs)[0]  # (Q,)
        return self


class RandomWalk(_Benchmark):
    """`rw`: q_T = y_T + Q_tau({y_{t+h} - y_t}); `quantiles_` are the change quantiles (Q,)."""

    def _values(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y - X[:, 0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(m, Q): each row's y_t (column 0) plus the quantiles of the h-month changes."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X[:, :1] + self.quantiles_[None, :]


class Climatology(_Benchmark):
    """`climatology`: q_T = Q_tau({y_{t+h}}), the same for every row; `quantiles_` (Q,)."""

    def _values(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(m, Q): the training targets' quantiles on every row."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return np.repeat(self.quantiles_[None, :], X.shape[0], axis=0)


def benchmark_adapter(
    name: str, kernel: Callable[..., np.ndarray], config_type: type, rank: int
) -> Adapter:
    """The adapter of a parameter-free benchmark (rw, climatology): features y_t only, fits
    cached by data alone, one batched numpy call per task of up to 256 fits."""

    def fit(payload: dict[str, Any]) -> dict[str, Any]:
        d = payload["data"]
        pred = kernel(d["X"], d["y"], d["w"], d["X_new"], payload["quantiles"])
        return {"pred": pred[:, :, None, :], "state": {"pairs": training_pairs(d["w"], d["y"])}}

    return Adapter(
        name=name,
        version=1,
        pooled=False,
        params=lambda c: {},
        features=lambda c: [lag_column("y", 0)],
        min_rows=lambda c: 2,
        fit_batch=fit,
        batch_fits=256,
        config_type=config_type,
        rank=rank,
    )
