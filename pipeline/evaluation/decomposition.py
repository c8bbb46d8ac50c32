"""Pinball loss decomposition into miscalibration, discrimination and uncertainty (pure).

For the scored rows of one (MODEL, HORIZON, QUANTILE) cell, pooled over countries, the mean
pinball loss S of the forecasts splits as

    S = MCB - DSC + UNC

(Fissler, Lorentzen and Mayer 2022, arXiv:2202.12780; Gneiting and Resin 2021): UNC is the
score of the constant forecast (the cell's empirical tau-quantile of the actuals), the
recalibrated forecasts are the isotonic (PAV) tau-quantile regression of the actuals on the
forecasts, MCB = S - S(recalibrated) >= 0 and DSC = UNC - S(recalibrated) >= 0. Lower MCB is
better calibrated, higher DSC better discrimination.

The recalibrated score S* (the minimum mean pinball loss over forecasts non-decreasing in the
original forecast, ties pooled) is what model_diagnostics' `decompose` with
`PinballLoss(level=tau)` finds by its generalised PAV, a Python loop over every row (30 us per
row: it was the costliest step of assemble). Here S* is exact too: `_recalibrated` finds an
isotonic minimiser by the slope trick (a dynamic programme over the sorted distinct forecasts
that keeps the loss' kinks in a heap), O(n log n), about 1 us of CPU per row (0.14 s for a
125k-row cell, where an earlier O(n sqrt n) threshold sweep took 0.6). The minimiser need not
be unique where the loss is flat, but its score is. No approximation: tests compare every term
with model_diagnostics on random data with ties.

Only the period "all" is decomposed.
"""

from __future__ import annotations

import heapq
import itertools
import math
from decimal import Decimal

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import HORIZON, MODEL, QUANTILE, horizon_label

DECOMPOSITION_COLUMNS = ("N", "SCORE", "MISCALIBRATION", "DISCRIMINATION", "UNCERTAINTY")
DECOMPOSITION_NOTE = (
    "Mean pinball loss = miscalibration - discrimination + uncertainty per model, horizon and "
    "level, pooled over countries (model-diagnostics' isotonic recalibration, Fissler, "
    "Lorentzen and Mayer 2022): miscalibration is the loss the recalibrated forecasts save "
    "(lower is better), discrimination what they gain over the constant climatological "
    "quantile (higher is better), uncertainty that constant forecast's loss."
)


def decompose_pinball(actual: np.ndarray, forecast: np.ndarray, tau: float) -> dict[str, float]:
    """SCORE, MISCALIBRATION, DISCRIMINATION, UNCERTAINTY of one sequence of tau-quantile
    forecasts (model_diagnostics' decomposition, computed as the module docstring says; NaN
    for an empty sequence)."""
    y = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    if y.shape != f.shape or y.ndim != 1:
        raise ValueError(f"actual and forecast must be 1-D of one shape; got {y.shape}, {f.shape}")
    if not 0.0 < float(tau) < 1.0:
        raise ValueError(f"tau must lie in (0, 1); got {tau}")
    if y.size == 0:
        return dict.fromkeys(DECOMPOSITION_COLUMNS[1:], math.nan)
    tau = float(tau)
    score = _mean_pinball(y, f, tau)
    # the constant forecast: model_diagnostics' midpoint of the lower and upper tau-quantile
    upper = -np.quantile(-y, float(1 - Decimal(str(tau))), method="inverted_cdf")
    marginal = 0.5 * (np.quantile(y, tau, method="inverted_cdf") + upper)
    uncertainty = _mean_pinball(y, np.full_like(y, marginal), tau)
    recalibrated = _mean_pinball(y, _recalibrated(y, f, tau), tau)
    return {
        "SCORE": score,
        "MISCALIBRATION": score - recalibrated,
        "DISCRIMINATION": uncertainty - recalibrated,
        "UNCERTAINTY": uncertainty,
    }


def _mean_pinball(y: np.ndarray, f: np.ndarray, tau: float) -> float:
    u = y - f
    return float(np.mean(np.maximum(tau * u, (tau - 1.0) * u)))


def _recalibrated(y: np.ndarray, f: np.ndarray, tau: float) -> np.ndarray:
    """The isotonic tau-quantile recalibration g of each row (module docstring).

    Dynamic programming over the atoms in increasing order: F_a(g), the least loss of atoms
    0..a with g at atom a, is convex and piecewise linear in g. Its slope is -tau x (rows so
    far) far left and rises by exactly 1 at each row's actual (the pinball loss' kink), so it
    is held as a heap of those kinks with their weights; the isotonic constraint (g non-
    decreasing) flattens it right of its minimum, which drops the heaviest kinks beyond
    weight tau x rows (the slope trick). The top kink left is atom a's leftmost minimiser,
    and g(a) = min(its minimiser, g(a + 1)) walking back."""
    values, atom = np.unique(f, return_inverse=True)
    order = np.argsort(atom, kind="stable")
    kinks = (-y[order]).tolist()  # negated: heapq is a min-heap, the top is the largest y
    ends = np.cumsum(np.bincount(atom, minlength=values.size)).tolist()
    # the heap holds each distinct kink once (floats compare in C, lists did not) and `weight`
    # its weight: the sum of its rows' 1s, less what flattenings cut from it
    heap: list[float] = []
    weight: dict[float, float] = {}
    push, pop = heapq.heappush, heapq.heappop
    best = []
    start = 0
    for end in ends:
        for kink in kinks[start:end]:
            w = weight.get(kink)
            if w is None:
                weight[kink] = 1.0
                push(heap, kink)
            else:
                weight[kink] = w + 1.0
        need = tau * end  # the kinks' weight that brings the slope to 0
        total = tau * start + (end - start)
        top = heap[0]
        while total - weight[top] >= need:
            total -= weight.pop(top)
            pop(heap)
            top = heap[0]
        weight[top] -= total - need
        best.append(-top)
        start = end
    return np.minimum.accumulate(np.asarray(best)[::-1])[::-1][atom]


def pinball_decomposition(frame: pd.DataFrame) -> pd.DataFrame:
    """The decomposition per (MODEL, HORIZON, QUANTILE) over the scored rows (ACTUAL and
    FORECAST known) of a forecast table, pooled over countries, with a leading PERIOD column
    ("all"): `PERIOD, MODEL, HORIZON, QUANTILE, N, SCORE, MISCALIBRATION, DISCRIMINATION,
    UNCERTAINTY`, sorted by the keys."""
    keys = [MODEL, HORIZON, QUANTILE]
    scored = frame["ACTUAL"].notna() & frame["FORECAST"].notna()
    rows = frame.loc[scored, [*keys, "ACTUAL", "FORECAST"]].sort_values(keys, kind="stable")
    group = rows.groupby(keys, sort=True, observed=True).ngroup().to_numpy(np.int64)
    edges = np.flatnonzero(np.r_[True, group[1:] != group[:-1], True]) if group.size else [0]
    actual, forecast = rows["ACTUAL"].to_numpy(np.float64), rows["FORECAST"].to_numpy(np.float64)
    records = []
    for a, b in itertools.pairwise(edges):
        model, horizon, tau = rows[keys].iloc[a]
        parts = decompose_pinball(actual[a:b], forecast[a:b], tau)
        records.append(("all", str(model), int(horizon), float(tau), b - a, *parts.values()))
    table = pd.DataFrame.from_records(
        records, columns=["PERIOD", *keys, *DECOMPOSITION_COLUMNS]
    ).astype({"N": "int64"})
    if table.empty:  # typed columns even without a scored row
        table = table.astype({MODEL: "string", HORIZON: "int64", QUANTILE: "float64"})
    return table


def decomposition_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows (model, h, level, N, score, MCB, DSC, UNC) for the report and
    the results page, one row per (model, horizon, level)."""

    def fmt(value: float) -> str:
        return "–" if not math.isfinite(value) else f"{value:.4g}"

    header = ["model", "h", "level", "N", "pinball", "miscalibration", "discrimination",
              "uncertainty"]  # fmt: skip
    rows = []
    for r in table.sort_values([MODEL, HORIZON, QUANTILE]).itertuples(index=False):
        rows.append([str(r.MODEL), horizon_label(r.HORIZON), f"{r.QUANTILE:g}", str(r.N),
                     fmt(r.SCORE), fmt(r.MISCALIBRATION), fmt(r.DISCRIMINATION),
                     fmt(r.UNCERTAINTY)])  # fmt: skip
    return header, rows


def decomposition_markdown(table: pd.DataFrame) -> str:
    """docs/RESULTS.md's summary: per model, the N-weighted means over horizons and levels of
    each term (means of the cells' terms, so the identity still holds)."""
    part = table.loc[table["PERIOD"] == "all"]
    terms = list(DECOMPOSITION_COLUMNS[1:])
    sums = part[terms].mul(part["N"], axis=0).assign(MODEL=part[MODEL], N=part["N"])
    sums = sums.groupby(MODEL, sort=True, observed=True).sum()
    lines = [
        "**Pinball loss decomposition** (N-weighted means over horizons and levels of the "
        "per-cell terms; per cell in `reports/tables/pinball_decomposition.parquet` and the "
        f"HTML report). {DECOMPOSITION_NOTE}\n",
        "| model | pinball | miscalibration | discrimination | uncertainty |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, row in sums.iterrows():
        values = [row[c] / row["N"] for c in terms]
        lines.append(f"| {model} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)
