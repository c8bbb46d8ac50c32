"""The report's data: each metric table as a header and rows of formatted, flagged cells.

`pipeline.evaluation.report` lays these out as HTML; here is only what a cell says (numbers to 4
significant digits, shares as percent, `–` for none) and which cells are flagged good or bad
(better or worse than the benchmark, a coverage off its level, a significant test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation.coverage_tests import HOLM_COLUMNS, P_COLUMNS

# A coverage cell is flagged when it misses the nominal level by more than this many binomial
# standard errors (serial correlation ignored, so it is a screening rule, not a test).
COVERAGE_FLAG_SE = 2.0
DM_LEVEL = 0.05
TEST_LEVEL = 0.05  # a coverage test's p-value flagged below this (after Holm's adjustment)


@dataclass(frozen=True)
class Cell:
    """One table cell: its text and its CSS class ("good", "bad", their paler "weak-good",
    "weak-bad", or none)."""

    text: str
    css: str = ""


Rows = tuple[list[str], list[list[Cell]]]  # a table's header and its rows of cells


def fmt_number(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def fmt_percent(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.1%}"


def _by_model_horizon(
    table: pd.DataFrame, cells: Callable[[pd.DataFrame], list[Cell]]
) -> list[list[Cell]]:
    rows = []
    for (model, horizon), part in table.groupby(["MODEL", "HORIZON"], sort=True):
        rows.append([Cell(str(model)), Cell(evaluate.horizon_label(horizon)), *cells(part)])
    return rows


def _levels(table: pd.DataFrame) -> list[float]:
    return sorted(table["QUANTILE"].unique().tolist()) if "QUANTILE" in table else []


def pinball_rows(table: pd.DataFrame) -> Rows:
    levels = _levels(table)

    def cells(part: pd.DataFrame) -> list[Cell]:
        by_q = dict(zip(part["QUANTILE"], part["PINBALL"], strict=True))
        pooled = float(np.average(part["PINBALL"], weights=part["N"]))
        return [Cell(fmt_number(by_q.get(q, math.nan))) for q in levels] + [
            Cell(fmt_number(pooled))
        ]

    header = ["model", "horizon", *[evaluate.quantile_label(q) for q in levels], "mean"]
    return header, _by_model_horizon(table, cells)


def _ratio_cell(value: float) -> Cell:
    css = "good" if value < 0.99 else "bad" if value > 1.01 else ""
    return Cell(fmt_number(value, 3), css if math.isfinite(value) else "")


def relative_rows(table: pd.DataFrame) -> Rows:
    levels = _levels(table)

    def cells(part: pd.DataFrame) -> list[Cell]:
        by_q = dict(zip(part["QUANTILE"], part["RELATIVE_PINBALL"], strict=True))
        n = part["N"].to_numpy(np.float64)
        pooled = float((part["PINBALL"] * n).sum() / (part["BENCHMARK_PINBALL"] * n).sum())
        return [_ratio_cell(by_q.get(q, math.nan)) for q in levels] + [_ratio_cell(pooled)]

    header = ["model", "horizon", *[evaluate.quantile_label(q) for q in levels], "mean"]
    return header, _by_model_horizon(table, cells)


def coverage_rows(table: pd.DataFrame, interval: pd.DataFrame) -> Rows:
    levels = _levels(table)
    spans = interval.set_index(["MODEL", "HORIZON"]) if len(interval) else None

    def cells(part: pd.DataFrame) -> list[Cell]:
        out = []
        by_q = {row.QUANTILE: row for row in part.itertuples(index=False)}
        for q in levels:
            row = by_q.get(q)
            if row is None:
                out.append(Cell("–"))
                continue
            se = math.sqrt(q * (1 - q) / max(row.N, 1))
            flagged = abs(row.COVERAGE - q) > COVERAGE_FLAG_SE * se
            out.append(Cell(fmt_percent(row.COVERAGE), "bad" if flagged else ""))
        key = (part["MODEL"].iloc[0], part["HORIZON"].iloc[0])
        if spans is not None and key in spans.index:
            span = spans.loc[key]
            out += [Cell(fmt_percent(span["COVERAGE"])), Cell(fmt_percent(span["NOMINAL"])),
                    Cell(fmt_number(span["WIDTH"], 3))]  # fmt: skip
        else:
            out += [Cell("–")] * 3
        return out

    header = ["model", "horizon", *[f"≤ {evaluate.quantile_label(q)}" for q in levels]]
    return [*header, "interval", "nominal", "width"], _by_model_horizon(table, cells)


def crps_rows(crps: pd.DataFrame, crossing: pd.DataFrame) -> Rows:
    merged = crps.merge(
        crossing[["MODEL", "HORIZON", "CROSSING_RATE"]], on=["MODEL", "HORIZON"], how="outer"
    )

    def cells(part: pd.DataFrame) -> list[Cell]:
        row = part.iloc[0]
        return [Cell(fmt_number(row["CRPS"])), Cell(fmt_percent(row["CROSSING_RATE"]))]

    return ["model", "horizon", "CRPS ≈", "crossing rate"], _by_model_horizon(merged, cells)


def dm_rows(table: pd.DataFrame) -> Rows:
    """DM tests: green/red (better/worse than the benchmark) where the Holm-adjusted p-value is
    below DM_LEVEL; pale where only the raw one is (significant alone, not among the many)."""

    def cells(part: pd.DataFrame) -> list[Cell]:
        row = part.iloc[0]
        side = "good" if row["STAT"] < 0 else "bad"
        raw, holm = (math.isfinite(row[c]) and row[c] < DM_LEVEL for c in ("P_VALUE", "P_HOLM"))
        css = side if holm else f"weak-{side}" if raw else ""
        return [Cell(fmt_number(row["MEAN_DIFF"], 3)), Cell(fmt_number(row["STAT"], 3), css),
                Cell(fmt_number(row["P_VALUE"], 3), css),
                Cell(fmt_number(row["P_HOLM"], 3), side if holm else ""),
                Cell(str(int(row["MONTHS"])))]  # fmt: skip

    header = ["model", "horizon", "mean loss diff", "DM stat", "p-value", "Holm p", "months"]
    return header, _by_model_horizon(table, cells)


def country_rows(table: pd.DataFrame) -> Rows:
    """Country x model mean pinball, pooled over horizons and quantiles."""
    models = sorted(table["MODEL"].unique().tolist())
    pooled = (
        table.assign(W=table["PINBALL"] * table["N"])
        .groupby(["COUNTRY", "MODEL"])[["W", "N"]]
        .sum()
    )
    countries = sorted(table["COUNTRY"].unique().tolist())
    # one country x model table (NaN where a model has no rows), not a lookup per cell
    ratio = (pooled["W"] / pooled["N"]).unstack("MODEL").reindex(index=countries, columns=models)
    rows = []
    for country, values in zip(countries, ratio.to_numpy(np.float64).tolist(), strict=True):
        best = int(np.nanargmin(values)) if np.isfinite(values).any() else -1
        rows.append([Cell(str(country))] + [
            Cell(fmt_number(v), "good" if i == best and len(models) > 1 else "") for i, v in enumerate(values)
        ])  # fmt: skip
    return ["country", *models], rows


def coverage_test_rows(table: pd.DataFrame) -> Rows:
    """Coverage tests: one row per (model, horizon, level), each test's p-value and its Holm
    adjustment; red where the adjusted one is below TEST_LEVEL, pale italic red where only the
    raw one is (below it alone, not among the many), as the DM table."""

    def p_cells(raw: float, adjusted: float) -> list[Cell]:
        held = math.isfinite(adjusted) and adjusted < TEST_LEVEL
        alone = math.isfinite(raw) and raw < TEST_LEVEL
        css = "bad" if held else "weak-bad" if alone else ""
        return [Cell(fmt_number(raw, 2), css), Cell(fmt_number(adjusted, 2), "bad" if held else "")]

    rows = []
    for r in table.sort_values(["MODEL", "HORIZON", "QUANTILE"]).itertuples(index=False):
        cells = [Cell(str(r.MODEL)), Cell(evaluate.horizon_label(r.HORIZON)),
                 Cell(f"{r.QUANTILE:g}"), Cell(str(r.N)), Cell(fmt_percent(r.HIT_RATE))]  # fmt: skip
        for p in P_COLUMNS:
            cells += p_cells(getattr(r, p), getattr(r, HOLM_COLUMNS[p]))
        rows.append(cells)
    tests = [p.removeprefix("P_") for p in P_COLUMNS]
    header = ["model", "h", "level", "N", "hit rate"]
    return header + [h for t in tests for h in (f"p {t}", f"Holm p {t}")], rows


def mcs_rows(table: pd.DataFrame) -> Rows:
    """MCS: one row per (horizon, model); members of the set in green."""
    rows = []
    for r in table.sort_values(["HORIZON", "P_VALUE"], ascending=[True, False]).itertuples(
        index=False
    ):
        rows.append([Cell(evaluate.horizon_label(r.HORIZON)), Cell(str(r.MODEL)),
                     Cell(fmt_number(r.P_VALUE, 3), "good" if r.IN_MCS else ""),
                     Cell("in" if r.IN_MCS else "out", "good" if r.IN_MCS else "")])  # fmt: skip
    return ["h", "model", "MCS p-value", "set"], rows
