"""Pinball loss decomposition into miscalibration, discrimination and uncertainty (pure).

For the scored rows of one (MODEL, HORIZON, QUANTILE) cell, pooled over countries, the mean
pinball loss S of the forecasts splits as

    S = MCB - DSC + UNC

(Fissler, Lorentzen and Mayer 2022, arXiv:2202.12780; Gneiting and Resin 2021): UNC is the
score of the constant forecast (the cell's empirical tau-quantile of the actuals), the
recalibrated forecasts are the isotonic (PAV) tau-quantile regression of the actuals on the
forecasts, MCB = S - S(recalibrated) >= 0 and DSC = UNC - S(recalibrated) >= 0. Lower MCB is
better calibrated, higher DSC better discrimination.

The decomposition is `model_diagnostics.scoring.decompose` with `PinballLoss(level=tau)`
(never a hand-written one); its pinball loss is metrics.pinball's, so SCORE equals the
pinball table's PINBALL of the same cell. Only the period "all" is decomposed (the isotonic
fit is the costly part of assemble's metrics).
"""

from __future__ import annotations

import math

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
    forecasts (model_diagnostics' decomposition; NaN for an empty sequence)."""
    from model_diagnostics.scoring import PinballLoss, decompose

    y = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    if y.shape != f.shape or y.ndim != 1:
        raise ValueError(f"actual and forecast must be 1-D of one shape; got {y.shape}, {f.shape}")
    if not 0.0 < float(tau) < 1.0:
        raise ValueError(f"tau must lie in (0, 1); got {tau}")
    if y.size == 0:
        return dict.fromkeys(DECOMPOSITION_COLUMNS[1:], math.nan)
    row = decompose(y, f, scoring_function=PinballLoss(level=float(tau))).row(0, named=True)
    return {
        "SCORE": float(row["score"]),
        "MISCALIBRATION": float(row["miscalibration"]),
        "DISCRIMINATION": float(row["discrimination"]),
        "UNCERTAINTY": float(row["uncertainty"]),
    }


def pinball_decomposition(frame: pd.DataFrame) -> pd.DataFrame:
    """The decomposition per (MODEL, HORIZON, QUANTILE) over the scored rows (ACTUAL and
    FORECAST known) of a forecast table, pooled over countries, with a leading PERIOD column
    ("all"): `PERIOD, MODEL, HORIZON, QUANTILE, N, SCORE, MISCALIBRATION, DISCRIMINATION,
    UNCERTAINTY`, sorted by the keys. Rows enter in (COUNTRY, WINDOW_END) order."""
    keys = [MODEL, HORIZON, QUANTILE]
    rows = frame.loc[frame["ACTUAL"].notna() & frame["FORECAST"].notna()]
    rows = rows.sort_values([*keys, "COUNTRY", "WINDOW_END"], kind="stable")
    records = []
    for (model, horizon, tau), part in rows.groupby(keys, sort=True, observed=True):
        parts = decompose_pinball(
            part["ACTUAL"].to_numpy(np.float64), part["FORECAST"].to_numpy(np.float64), tau
        )
        records.append(("all", model, horizon, tau, len(part), *parts.values()))
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
