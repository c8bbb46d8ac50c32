"""Shared helpers for quantile models: pinball loss, rearrangement, crossing, small checks.

Parameter ranges are declared once, in solvers/parameters.py (as `Rule`s of rules.py).

Imports: numpy; torch inside the functions that need it (ar_qr's tasks never load it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: ar_qr's tasks never import it
    import torch


def pinball_loss(y: np.ndarray, pred: np.ndarray, quantiles: Sequence[float]) -> float:
    """Mean pinball (check) loss over rows and quantiles; y (n,), pred (n, Q)."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    q = np.asarray(quantiles, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != (y.shape[0], q.shape[0]):
        raise ValueError(
            f"pred must have shape (n, Q) = ({y.shape[0]}, {q.shape[0]}); got {pred.shape}"
        )
    u = y[:, None] - pred
    return float(np.mean(np.maximum(q * u, (q - 1.0) * u)))


def pinball_per_quantile(
    y: np.ndarray, pred: np.ndarray, quantiles: Sequence[float], w: np.ndarray | None = None
) -> np.ndarray:
    """Weighted mean pinball loss per problem and quantile.

    y (..., n), pred (..., n, Q), w (..., n) nonnegative weights (None = all ones);
    returns (..., Q).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    u = np.asarray(y, dtype=np.float64)[..., None] - np.asarray(pred, dtype=np.float64)
    loss = np.maximum(q * u, (q - 1.0) * u)
    if w is None:
        return loss.mean(axis=-2)
    w = np.asarray(w, dtype=np.float64)[..., None]
    return (loss * w).sum(axis=-2) / np.maximum(w.sum(axis=-2), np.finfo(float).tiny)


def rearrange_quantiles(pred: np.ndarray) -> np.ndarray:
    """Sort along the last (quantile) axis so forecasts never cross (Chernozhukov et al.)."""
    return np.sort(np.asarray(pred), axis=-1)


def crossing_rate(pred: np.ndarray) -> float:
    """Fraction of rows (all leading axes) whose quantiles are not non-decreasing."""
    pred = np.asarray(pred)
    if pred.shape[-1] < 2 or pred.size == 0:
        return 0.0
    crossed = np.any(np.diff(pred, axis=-1) < 0, axis=-1)
    return float(crossed.mean())


def crossing_rate_batch(pred: np.ndarray) -> np.ndarray:
    """Per-problem crossing rate for pred (B, m, Q); returns (B,)."""
    pred = np.asarray(pred)
    if pred.shape[-1] < 2 or pred.shape[1] == 0:
        return np.zeros(pred.shape[0])
    return np.any(np.diff(pred, axis=-1) < 0, axis=-1).mean(axis=1)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return value as int if it is an integer >= minimum, else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """Raise ValueError unless value is one of the allowed strings."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)!r}; got {value!r}")
    return str(value)


def as_batch(
    X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert a batch (X (B,n,p), y (B,n), w (B,n) or None) to float64 arrays."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"X must have shape (B, n, p); got shape {X.shape}")
    if y.shape != X.shape[:2]:
        raise ValueError(f"y must have shape (B, n) = {X.shape[:2]}; got {y.shape}")
    if w is None:
        w = np.ones_like(y)
    else:
        w = np.asarray(w, dtype=np.float64)
        if w.shape != y.shape:
            raise ValueError(f"w must have shape (B, n) = {y.shape}; got {w.shape}")
        if np.any(~np.isfinite(w)) or np.any(w < 0):
            raise ValueError("w must be finite and nonnegative (0 marks a padding row)")
    active = w > 0
    if np.any(~np.isfinite(X) & active[..., None]) or np.any(~np.isfinite(y) & active):
        raise ValueError("X and y must be finite on rows with positive weight")
    # padding rows may hold NaN; zero them so they cannot poison the linear algebra
    X = np.where(active[..., None], X, 0.0)
    y = np.where(active, y, 0.0)
    return X, y, w


def chol_solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve (L L') x = b with two triangular solves (cheaper than cholesky_solve on CPU
    for many tiny matrices: less per-matrix LAPACK overhead)."""
    import torch

    z = torch.linalg.solve_triangular(L, b, upper=False)
    return torch.linalg.solve_triangular(L.transpose(-1, -2), z, upper=True)


@contextmanager
def torch_single_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block, restoring the previous setting.

    The batched solvers issue thousands of tiny LAPACK calls (13x13, 50x50); splitting
    them over threads oversubscribes the cores (measured 2.9 s vs 48 s on a loaded 2-core
    machine), so parallelism belongs to the task runner's processes, not to these kernels.
    """
    import torch

    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
