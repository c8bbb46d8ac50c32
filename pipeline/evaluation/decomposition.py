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
row: it was the costliest step of assemble). Here S* is exact too: `recalibrated_many` finds
the least isotonic minimiser of every cell at once by a bisection over thresholds in numpy,
about log2(distinct actuals) passes over the rows (0.2-0.3 us of CPU per row in all at 1M
fits, where the slope trick's heap it replaced took about 1 us per row in a Python loop). The
minimiser need not be unique where the loss is flat, but its score is. No approximation:
tests compare every term with model_diagnostics on random data with ties, and the minimiser
with a brute-force search in exact arithmetic.

Only the period "all" is decomposed.
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pandas as pd

from pipeline.evaluation.grouping import Keys
from pipeline.evaluation.metrics import HORIZON, MODEL, QUANTILE, horizon_label

_BATCH_ROWS = 1 << 18  # rows of the groups recalibrated at once (see recalibrated_many)
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
    return _terms(y, f, float(tau), _recalibrated(y, f, float(tau)))


def _terms(y: np.ndarray, f: np.ndarray, tau: float, g: np.ndarray) -> dict[str, float]:
    """The four terms of one sequence, `g` its recalibrated forecasts."""
    score = _mean_pinball(y, f, tau)
    # the constant forecast: model_diagnostics' midpoint of the lower and upper tau-quantile
    upper = -np.quantile(-y, float(1 - Decimal(str(tau))), method="inverted_cdf")
    marginal = 0.5 * (np.quantile(y, tau, method="inverted_cdf") + upper)
    uncertainty = _mean_pinball(y, np.full_like(y, marginal), tau)
    recalibrated = _mean_pinball(y, g, tau)
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
    """The isotonic tau-quantile recalibration g of each row of one sequence."""
    return recalibrated_many(y, f, np.array([tau]), np.array([0, y.size]))


def recalibrated_many(
    y: np.ndarray, f: np.ndarray, tau: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """The isotonic tau-quantile recalibration g of each row, for the groups of rows
    `edges[i]:edges[i + 1]` at once (`tau[i]` each): the pointwise least minimiser of the
    group's pinball loss over forecasts non-decreasing in `f` (ties pooled).

    By thresholds, exactly (no approximation): for a threshold t, the rows with g > t are a
    suffix of the group's rows in forecast order (a cut at a change of forecast), the one
    that minimises the sum of 1{y <= t} - tau over it (the loss' change when g crosses t);
    a cut found for t also holds for the rows on either side at any other threshold. So a
    bisection over the sorted distinct actuals: every segment (rows between two cuts, its
    g known to lie in a range of those values) is split at the middle threshold of its
    range, all segments in one pass of numpy (a cumulative sum, a segmented maximum), until
    each range is one value; about log2(distinct actuals) passes over the rows."""
    g = np.empty(y.size)
    first = 0
    while first < edges.size - 1:
        # whole groups of at most _BATCH_ROWS rows at a time (a larger group alone): each
        # pass's arrays then stay in the CPU's cache (all of 3M rows at once: 3x the time)
        last = max(first + 1, int(np.searchsorted(edges, edges[first] + _BATCH_ROWS, "right")) - 1)
        rows = slice(int(edges[first]), int(edges[last]))
        g[rows] = _bisect(y[rows], f[rows], tau[first:last], edges[first : last + 1] - edges[first])
        first = last
    return g


def _bisect(y: np.ndarray, f: np.ndarray, tau: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """recalibrated_many on a batch of groups (`edges` from 0)."""
    n_groups = edges.size - 1
    g = np.empty(y.size)
    if y.size == 0:
        return g
    # rows in forecast order per group; each distinct actual's rank, numbered across groups
    order = np.empty(y.size, np.int64)
    rank = np.empty(y.size, np.int32)
    values, lo, hi, cut_ok = [], np.empty(n_groups, np.int64), np.empty(n_groups, np.int64), []
    done = 0
    for i, (a, b) in enumerate(itertools.pairwise(edges.tolist())):
        by_f = np.argsort(f[a:b]) + a
        order[a:b] = by_f
        fs = f[by_f]
        cut_ok.append(np.r_[True, fs[1:] != fs[:-1]])  # a cut may fall before this row
        by_y = np.argsort(y[a:b])
        ys = y[a:b][by_y]
        new = np.r_[True, ys[1:] != ys[:-1]]
        rank[by_y + a] = np.cumsum(new) - 1 + done
        values.append(ys[new])
        lo[i], hi[i] = done, done + values[-1].size - 1
        done += values[-1].size
    r = rank[order]
    del rank
    group_of = np.repeat(np.arange(n_groups), np.diff(edges))
    num, den, exact = _fractions(tau, y.size)
    at_cut = np.concatenate(cut_ok)
    # segments (contiguous in `r`), each with its range [lo, hi] of rank
    start, length = edges[:-1].astype(np.int64), np.diff(edges).astype(np.int64)
    keep = length > 0
    start, length, lo, hi = start[keep], length[keep], lo[keep], hi[keep]
    seg_num = num[keep]
    m = y.size
    position = np.arange(m, dtype=np.int64)
    wide = m + 1  # a key's position part: key * wide + position picks the largest position
    if exact:  # the key den * L - num * p as an integer (no rounding), position appended
        base = (position * -num[group_of] * wide + position).astype(np.int64)
        base[~at_cut] = np.iinfo(np.int64).min // 2
    else:
        base = position * -tau[group_of]
        base[~at_cut] = -np.inf
    below = np.zeros(m + 1, np.int64)  # rows with r <= threshold before each position
    while (open_ := lo < hi).any():
        mid = (lo + hi) // 2
        np.cumsum(r <= np.repeat(mid.astype(np.int32), length), out=below[1:])
        end = start + length
        if exact:
            key = below[:-1] * (den * wide) + base
            best = np.maximum.reduceat(key, start)
            at_end = (below[end] * den - seg_num * end) * wide + end
            cut = np.maximum(best, at_end) % wide
        else:
            seg_tau = tau[group_of[start]]
            key = below[:-1] + base
            best = np.maximum.reduceat(key, start)
            ties = np.where(key == np.repeat(best, length), position, -1)
            last = np.maximum.reduceat(ties, start)
            cut = np.where(below[end] - seg_tau * end >= best, end, last)
        # closed segments keep their rows (cut at their end: all left, range unchanged)
        cut = np.where(open_, cut, end)
        mid = np.where(open_, mid, hi)
        left, right = cut - start, end - cut
        start = np.stack([start, cut], 1).ravel()
        length = np.stack([left, right], 1).ravel()
        lo, hi = np.stack([lo, mid + 1], 1).ravel(), np.stack([mid, hi], 1).ravel()
        seg_num = np.repeat(seg_num, 2)
        keep = length > 0
        start, length, lo, hi = start[keep], length[keep], lo[keep], hi[keep]
        seg_num = seg_num[keep]
    g[order] = np.concatenate(values)[np.repeat(lo, length)]
    return g


def _fractions(tau: np.ndarray, n: int) -> tuple[np.ndarray, int, bool]:
    """Each level as num / den with one den (the levels as written: 0.1 = 1/10), and
    whether the bisection's integer keys (den * rows * (rows + 1), twice) fit int64; else
    it compares float keys (rows - tau * rows), whose near-ties round either way."""
    fractions = [Fraction(str(float(t))) for t in tau]
    den = math.lcm(*(fr.denominator for fr in fractions)) if fractions else 1
    num = np.array([fr.numerator * (den // fr.denominator) for fr in fractions], np.int64)
    exact = 4 * den * (n + 1) * (n + 1) < 2**62
    return num, den, exact


def pinball_decomposition(frame: pd.DataFrame) -> pd.DataFrame:
    """The decomposition per (MODEL, HORIZON, QUANTILE) over the scored rows (ACTUAL and
    FORECAST known) of a forecast table, pooled over countries, with a leading PERIOD column
    ("all"): `PERIOD, MODEL, HORIZON, QUANTILE, N, SCORE, MISCALIBRATION, DISCRIMINATION,
    UNCERTAINTY`, sorted by the keys."""
    keys = [MODEL, HORIZON, QUANTILE]
    # the scored rows by group (sorted keys), each group's in frame order: integer codes and
    # one stable sort, not a sort and a groupby of the frame (a copy of every row)
    groups = Keys(frame).groups(keys)
    rows = np.arange(len(frame)) if groups.kept is None else np.flatnonzero(groups.kept)
    actual = frame["ACTUAL"].to_numpy(np.float64, na_value=np.nan)[rows]
    forecast = frame["FORECAST"].to_numpy(np.float64, na_value=np.nan)[rows]
    scored = ~(np.isnan(actual) | np.isnan(forecast))
    order = np.argsort(groups.ids[scored], kind="stable")
    rows, actual, forecast = rows[scored][order], actual[scored][order], forecast[scored][order]
    group = groups.ids[scored][order]
    del order, scored
    edges = (
        np.flatnonzero(np.r_[True, group[1:] != group[:-1], True])
        if group.size
        else np.zeros(1, np.int64)
    )
    cells = frame[keys].iloc[rows[edges[:-1]]].itertuples(index=False, name=None)
    cells = [(str(model), int(horizon), float(tau)) for model, horizon, tau in cells]
    taus = np.array([tau for *_, tau in cells])
    if not np.all((taus > 0.0) & (taus < 1.0)):
        raise ValueError(f"QUANTILE must lie in (0, 1); got {sorted(set(taus.tolist()))}")
    g = recalibrated_many(actual, forecast, taus, np.asarray(edges, np.int64))
    records = []
    for (model, horizon, tau), (a, b) in zip(cells, itertools.pairwise(edges), strict=True):
        parts = _terms(actual[a:b], forecast[a:b], tau, g[a:b])
        records.append(("all", model, horizon, tau, b - a, *parts.values()))
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
