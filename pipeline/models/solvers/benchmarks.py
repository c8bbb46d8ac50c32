"""Benchmark forecasts, batched over fits (pure numpy; DESIGN.md "Benchmarks, combination").

Both read the fits' training pairs as the runtime stacks them: X (B, n, p) whose first column
is y_lag0 (= y_t), y (B, n) the target y_{t+h}, w (B, n) the row mask (0 = padding or an
incomplete row) and X_new (B, 1, p) the features at the origin T. Empirical quantiles are
numpy's default (linear interpolation), taken over the rows with w > 0 and a finite target.

- `rw` (no change + the window's h-month changes): q_T = y_T + Q_tau({y_{t+h} - y_t})
- `climatology`: q_T = Q_tau({y_{t+h}})

Imports: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def masked(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """values, NaN where the row is left out (w = 0) or the value is not finite."""
    return np.where((np.asarray(w) > 0) & np.isfinite(values), values, np.nan)


def _check(X: np.ndarray, y: np.ndarray, w: np.ndarray, X_new: np.ndarray) -> None:
    if X.ndim != 3 or y.shape != X.shape[:2] or w.shape != y.shape:
        raise ValueError(
            f"X must be (B, n, p) with y and w (B, n); got {X.shape}, {y.shape}, {w.shape}"
        )
    if X_new.shape[0] != X.shape[0] or X_new.shape[-1] != X.shape[-1]:
        raise ValueError(f"X_new must be (B, m, p) matching X {X.shape}; got {X_new.shape}")


def nan_quantiles(values: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
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
    changes = masked(y - X[:, :, 0], w)
    return X_new[:, :, :1] + nan_quantiles(changes, quantiles)[:, None, :]


def fit_predict_climatology_batch(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, X_new: np.ndarray, quantiles: Sequence[float]
) -> np.ndarray:
    """Climatology benchmark: (B, m, Q) forecasts Q_tau(y_{t+h}), the same for every row."""
    X, y, w, X_new = (np.asarray(a, dtype=np.float64) for a in (X, y, w, X_new))
    _check(X, y, w, X_new)
    levels = nan_quantiles(masked(y, w), quantiles)
    return np.broadcast_to(levels[:, None, :], (X.shape[0], X_new.shape[1], levels.shape[1])).copy()


def training_pairs(w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) number of training pairs each fit used."""
    return np.isfinite(masked(np.asarray(y, dtype=np.float64), w)).sum(axis=1)
