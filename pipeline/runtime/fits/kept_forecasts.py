"""A model's forecasts as they arrived: each task's result (and the cache's lookup) kept as its
own arrays, with per fit the source and row that hold its latest forecasts (pure numpy).

Train used to copy every result into per group arrays of every fit, (F, C, H, Q) and (F, Q),
filled with NaN first: at 10M fits a first touch of about 0.5 GB and a copy of every
forecast, 0.2 us per fit of the driver, for arrays the table's build only reads from. Here a
result costs 8 bytes per fit of bookkeeping and no copy; the build gathers each block's
forecasts from the sources that hold them (`take`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

# above this many runs of one source in a gather, the fits are grouped by source with a sort
# instead of a loop over the runs (the results of a task cover a run of a group's fits)
_MAX_RUNS = 1024


class KeptForecasts:
    """Per group of `shapes` ((F, C, H) each) and Q quantiles: which fits are known (`have`)
    and where their forecasts are. A fit added again (a retry) reads from its latest source."""

    def __init__(self, shapes: Sequence[tuple[int, int, int]], Q: int) -> None:
        self.shapes, self.Q = [tuple(s) for s in shapes], Q
        self.have = [np.zeros(F, dtype=bool) for F, _, _ in self.shapes]
        # np.zeros: pages the kernel hands out zeroed on first write, not a fill of every fit
        self.source = [np.zeros(F, dtype=np.int32) for F, _, _ in self.shapes]
        self.row = [np.zeros(F, dtype=np.int32) for F, _, _ in self.shapes]
        self.sources: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in self.shapes]

    @classmethod
    def of_arrays(
        cls, pred: Sequence[np.ndarray], alpha: Sequence[np.ndarray], have: Sequence[np.ndarray]
    ) -> KeptForecasts:
        """Per group arrays of every fit, pred (F, C, H, Q) and alpha (F, Q), known where
        `have`: one source each, no copy."""
        kept = cls([p.shape[:3] for p in pred], pred[0].shape[3] if len(pred) else 0)
        for gi, (p, a, h) in enumerate(zip(pred, alpha, have, strict=True)):
            kept.add(gi, np.nonzero(h)[0], p, a, rows=np.nonzero(h)[0])
        return kept

    def add(
        self,
        gi: int,
        idx: np.ndarray,
        pred: np.ndarray,
        alpha: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> None:
        """Fits `idx` of group `gi` are known: their forecasts are pred[rows] ((n, C, H, Q),
        broadcast as an assignment would) and alpha[rows] ((n, Q)); `rows` None: 0..n-1.
        The arrays are kept, not copied: the caller must not change them."""
        idx = np.asarray(idx, dtype=np.int64)
        if not idx.size:
            return
        _, C, H = self.shapes[gi]
        pred, alpha = np.asarray(pred), np.asarray(alpha)
        # as rows of H x Q forecasts, one per (fit, forecast row): `take` gathers whole rows
        # (a copy only where the arrays are not float64 and contiguous already)
        pred = _float_rows(np.broadcast_to(pred, (pred.shape[0], C, H, self.Q)), H * self.Q)
        alpha = _float_rows(np.broadcast_to(alpha, (alpha.shape[0], self.Q)), self.Q)
        self.sources[gi].append((pred, alpha))
        self.source[gi][idx] = len(self.sources[gi]) - 1
        self.row[gi][idx] = np.arange(idx.size) if rows is None else rows
        self.have[gi][idx] = True

    def take(self, gi: int, fit: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The forecasts of known fits `fit` of group `gi` at their forecast rows `col`:
        pred (n, H, Q) and alpha (n, Q), float64: read-only (views of a result where one holds
        them all at consecutive rows)."""
        _, C, H = self.shapes[gi]
        n, Q = fit.size, self.Q
        if not n:
            return np.empty((n, H, Q)), np.empty((n, Q))
        src = self.source[gi][fit]
        at = self.row[gi][fit].astype(np.int64)
        if C > 1:  # the source's row of (fit, forecast row)
            at *= C
            at += col
        sources = self.sources[gi]
        edges = np.flatnonzero(src[1:] != src[:-1]) + 1
        start = _range_start(at) if C == 1 and not edges.size else None
        if start is not None:  # one result's consecutive rows (a block of one task's fits)
            p, a = sources[int(src[0])]
            return p[start : start + n].reshape(n, H, Q), a[start : start + n]
        pred, alpha = np.empty((n, H * Q)), np.empty((n, Q))
        if edges.size < _MAX_RUNS:  # runs of one source each: slices
            bounds = np.r_[0, edges, n].tolist()
            for lo, hi in pairwise(bounds):
                p, a = sources[int(src[lo])]
                start = _range_start(at[lo:hi]) if C == 1 else None
                if start is not None:  # a task's consecutive fits (a per-country plan's): a copy
                    pred[lo:hi] = p[start : start + hi - lo]
                    alpha[lo:hi] = a[start : start + hi - lo]
                    continue
                p.take(at[lo:hi], axis=0, out=pred[lo:hi])
                a.take(at[lo:hi] // C if C > 1 else at[lo:hi], axis=0, out=alpha[lo:hi])
            return pred.reshape(n, H, Q), alpha
        order = np.argsort(src, kind="stable")
        cuts = np.searchsorted(src[order], np.arange(len(sources) + 1)).tolist()
        for k, (lo, hi) in enumerate(pairwise(cuts)):
            if lo == hi:
                continue
            sel = order[lo:hi]
            p, a = sources[k]
            pred[sel] = p.take(at[sel], axis=0)
            alpha[sel] = a.take(at[sel] // C, axis=0)
        return pred.reshape(n, H, Q), alpha


def _range_start(at: np.ndarray) -> int | None:
    """at[0] when `at` is consecutive integers from it (the rows a slice holds), else None."""
    if not at.size or int(at[-1]) - int(at[0]) != at.size - 1:
        return None
    return int(at[0]) if at.size == 1 or bool((np.diff(at) == 1).all()) else None


def _float_rows(array: np.ndarray, width: int) -> np.ndarray:
    """`array` as contiguous float64 rows of `width` values: a view where it is one already,
    and one row repeated where `array` repeats one (rw's all-NaN alpha: kept without memory
    per fit)."""
    if array.ndim and array.shape[0] > 1 and array.strides[0] == 0:
        row = np.ascontiguousarray(array[0], dtype=np.float64).reshape(width)
        return np.broadcast_to(row, (array.shape[0], width))
    return np.ascontiguousarray(array, dtype=np.float64).reshape(-1, width)
