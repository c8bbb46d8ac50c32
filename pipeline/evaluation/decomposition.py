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
row: it was the costliest step of assemble). Here S* is exact too, from the threshold
decomposition of the pinball loss: rho_tau(g, y) = int S_c(g, y) dc with the elementary
scores S_c(g, y) = (1{y < c} - tau)(1{g > c} - 1{y > c}). For each threshold c the best set
{g > c} of an isotonic g is a suffix of the forecasts' sorted distinct values (atoms): the one
minimising the suffix sum of 1{y <= c} - tau, constant between consecutive distinct actuals.
The largest minimising suffixes are nested as c grows, so one isotonic g attains every
threshold's minimum at once; S* is that g's mean pinball loss. `_recalibrated` sweeps the
thresholds in blocks of about sqrt(atoms) rows: within a block the suffix sums change only
at the block's atoms, so each threshold's minimum is a small (block x block) problem over
the segments between them plus one O(atoms) pass per block, O(n sqrt(n)) in all (0.6-0.8 CPU-s
for a 125k-row cell) instead of the generalised PAV's Python loop. No approximation: tests
compare every term with model_diagnostics on random data with ties.

Only the period "all" is decomposed.
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import HORIZON, MODEL, QUANTILE, horizon_label

DECOMPOSITION_COLUMNS = ("N", "SCORE", "MISCALIBRATION", "DISCRIMINATION", "UNCERTAINTY")
BLOCK = 1  # rows per threshold block / sqrt(atoms): balances its two costs (measured)
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

    Suffix k = atoms k.. (k = n_atoms: the empty suffix, sum 0). base[k] holds the suffix sum
    of (count of y <= c) - tau * rows at the last threshold of the previous block; a block's
    rows add 1 to base[k] for every k <= their atom, so between two of the block's atoms
    (a segment) base moves as one: each threshold's minimum is a segment's minimum plus the
    block's count for that segment."""
    values, atom = np.unique(f, return_inverse=True)
    n_atoms = values.size
    levels, level_of = np.unique(y, return_inverse=True)
    per_atom = np.bincount(atom, minlength=n_atoms).astype(np.float64)
    base = np.zeros(n_atoms + 1)
    base[:-1] = -tau * np.cumsum(per_atom[::-1])[::-1]
    order = np.argsort(level_of, kind="stable")
    level_sorted, atom_sorted = level_of[order], atom[order]
    first_row = np.searchsorted(level_sorted, np.arange(levels.size + 1))  # rows of each level
    target = max(int(BLOCK * math.sqrt(n_atoms)), 16)  # rows per block
    suffix = np.empty(levels.size, dtype=np.int64)  # largest minimising suffix per level
    j0 = 0
    while j0 < levels.size:
        # whole levels, about `target` rows
        j1 = max(int(np.searchsorted(first_row, first_row[j0] + target, side="right")) - 1, j0 + 1)
        j1 = min(j1, levels.size)
        rows = slice(first_row[j0], first_row[j1])
        block_atoms = atom_sorted[rows]
        cut = np.unique(block_atoms)  # segment s = (cut[s - 1], cut[s]]; the last is (cut[-1], n]
        starts = np.r_[0, cut + 1]
        seg_min = np.minimum.reduceat(base, starts)
        # columns in reverse segment order (r = cut.size - s), so that added[j, r], the block
        # rows with level <= j and atom >= cut[s], is a prefix sum both ways; r = 0 is the
        # last segment, which no row reaches; argmin's first hit is then the last segment
        width = cut.size + 1
        column = cut.size - np.searchsorted(cut, block_atoms)
        cell = (level_sorted[rows] - j0) * width + column
        added = np.bincount(cell, minlength=(j1 - j0) * width).reshape(j1 - j0, width)
        np.cumsum(added, axis=1, out=added)
        np.cumsum(added, axis=0, out=added)
        total = added + seg_min[::-1]
        best = cut.size - np.argmin(total, axis=1)
        ends = np.r_[starts[1:], n_atoms + 1]
        for segment in np.unique(best):  # the last position of the segment's minimum
            part = base[starts[segment] : ends[segment]]
            at = ends[segment] - 1 - int(np.argmin(part[::-1]))
            suffix[j0:j1][best == segment] = at
        ones = np.bincount(block_atoms, minlength=n_atoms).astype(np.float64)
        base[:-1] += np.cumsum(ones[::-1])[::-1]
        j0 = j1
    # atom a lies above level j's threshold iff a >= suffix[j], so g(a) is the level after the
    # last such j; the running maximum keeps the suffixes nested where roundoff broke a tie
    nested = np.maximum.accumulate(suffix[:-1])
    return levels[np.searchsorted(nested, np.arange(n_atoms), side="right")][atom]


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
