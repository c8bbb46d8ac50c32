"""The results page's forecast accuracy: the metric tables of both periods (pinball, relative
pinball, coverage, central interval, crossing, Diebold-Mariano) and the short reading written
from the same numbers (pipeline.evaluation.results assembles the page)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.evaluation.dm import with_holm
from pipeline.evaluation.forecast_table import BENCHMARK


def metrics_section(tables: dict[str, pd.DataFrame], benchmark: str) -> str:
    lines = ["## Forecast accuracy\n"]
    lines.append(
        "Pinball loss is the mean check loss over (country, origin); relative pinball divides by "
        f"`{benchmark}` on the same rows (below 1 = better than the benchmark). `ex_covid` drops forecasts "
        "for 2020-03 .. 2021-12.\n"
    )
    for period in ("all", "ex_covid"):
        lines.append(f"### {'All months' if period == 'all' else 'Without the COVID months'}\n")
        lines.append(_pivot(tables.get("pinball"), period, "PINBALL", "Mean pinball loss", ".3f"))
        lines.append(
            _pivot(
                tables.get("relative_pinball"),
                period,
                "RELATIVE_PINBALL",
                f"Pinball relative to {benchmark}",
                ".3f",
            )
        )
        lines.append(
            _pivot(
                tables.get("coverage"),
                period,
                "COVERAGE",
                "Empirical coverage (share of actuals at or below the forecast)",
                ".3f",
            )
        )
        lines.append(
            _simple(
                tables.get("interval"),
                period,
                ["COVERAGE", "WIDTH"],
                "Central interval (lowest to highest quantile)",
            )
        )
        lines.append(
            _simple(
                tables.get("crossing"),
                period,
                ["CROSSING_RATE"],
                "Quantile crossing rate (after rearrangement)",
            )
        )
        lines.append(
            _simple(
                with_holm(tables.get("dm")),
                period,
                ["MEAN_DIFF", "STAT", "P_VALUE", "P_HOLM"],
                f"Diebold-Mariano vs {benchmark} (pinball averaged over quantiles; HAC, h-1 lags; "
                "p_holm: Holm-adjusted over this period's model x horizon comparisons)",
            )
        )
    return "\n".join(lines)


def reading_section(
    tables: dict[str, pd.DataFrame], progress: pd.DataFrame, benchmark: str = BENCHMARK
) -> str:
    lines = ["## Reading\n"]
    relative = tables.get("relative_pinball")
    if relative is not None and not relative.empty:
        for period in ("all", "ex_covid"):
            part = relative[relative["PERIOD"] == period]
            summary = part.groupby("MODEL")["RELATIVE_PINBALL"].agg(["mean", "min", "max"])
            for model in _ordered(summary.index):
                if model == benchmark:
                    continue
                mean, low, high = summary.loc[model]
                verdict = "beats" if mean < 0.98 else ("trails" if mean > 1.02 else "matches")
                lines.append(
                    f"- {period}: `{model}` {verdict} `{benchmark}` on average (relative pinball {mean:.3f}, "
                    f"range {low:.3f} .. {high:.3f} over horizon x quantile cells)."
                )
    interval = tables.get("interval")
    if interval is not None and not interval.empty:
        part = interval[interval["PERIOD"] == "all"]
        for model, rows in part.groupby("MODEL"):
            nominal = rows["NOMINAL"].iloc[0]
            lines.append(
                f"- `{model}`: central {nominal:.0%} interval covers {rows['COVERAGE'].min():.0%} .. "
                f"{rows['COVERAGE'].max():.0%} of outcomes across horizons "
                f"({'too narrow' if rows['COVERAGE'].mean() < nominal - 0.05 else 'about right' if rows['COVERAGE'].mean() <= nominal + 0.05 else 'too wide'})."
            )
    pinball = tables.get("pinball")
    if pinball is not None and not pinball.empty:
        mean = pinball[pinball["PERIOD"] == "all"].groupby(["HORIZON", "MODEL"])["PINBALL"].mean()
        for horizon, per_model in mean.groupby(level="HORIZON"):
            ranked = per_model.droplevel("HORIZON").sort_values()
            lines.append(
                f"- h = {horizon}: lowest mean pinball `{ranked.index[0]}` ({ranked.iloc[0]:.3f}); "
                + ", ".join(f"`{m}` {v:.3f}" for m, v in ranked.iloc[1:].items())
                + "."
            )
    coverage = tables.get("coverage")
    if coverage is not None and not coverage.empty:
        part = coverage[coverage["PERIOD"] == "all"]
        top = part[part["QUANTILE"] == part["QUANTILE"].max()]
        for model, rows in top.groupby("MODEL"):
            above = 1 - rows["COVERAGE"].mean()
            lines.append(
                f"- `{model}`: outcomes landed above the q{rows['QUANTILE'].iloc[0]:g} forecast "
                f"{above:.0%} of the time (nominal {1 - rows['QUANTILE'].iloc[0]:.0%}), averaged over horizons"
                + (
                    ": upside risk was under-predicted."
                    if above > 1.5 * (1 - rows["QUANTILE"].iloc[0])
                    else "."
                )
            )
    dm = with_holm(tables.get("dm"))
    if dm is not None and not dm.empty:
        mcs = tables.get("mcs")
        has_mcs = mcs is not None and not mcs.empty
        lines.append(_dm_reading(dm[dm["PERIOD"] == "all"], benchmark, has_mcs))
    failed = int((progress["status"] == "failed").sum())
    lines.append(f"- Failed progress rows at the end of the run: {failed}.")
    return "\n".join(lines) + "\n"


def _dm_reading(part: pd.DataFrame, benchmark: str, has_mcs: bool) -> str:
    """The DM line of the reading: how many comparisons are significant at 5% one at a time
    and how many after Holm's adjustment for their number (the family: every model x horizon
    against the benchmark over all months), the latter named."""
    raw = part[part["P_VALUE"] < 0.05]
    held = part[part["P_HOLM"] < 0.05]
    verdicts = [
        f"`{r.MODEL}` h={r.HORIZON} {'better' if r.MEAN_DIFF < 0 else 'worse'} "
        f"(p={r.P_VALUE:.3f}, Holm p={r.P_HOLM:.3f})"
        for r in held.itertuples()
    ]
    tested = int(part["P_VALUE"].notna().sum())
    text = (
        f"- Diebold-Mariano vs `{benchmark}` over all months: {len(raw)} of {tested} model x "
        f"horizon comparisons have p < 0.05 one at a time, which about {0.05 * tested:.1f} "
        f"would reach by chance alone if no model differed from `{benchmark}`; {len(held)} stay "
        f"significant at 5% after Holm's adjustment for the {tested} comparisons"
        + (": " + "; ".join(verdicts) + "." if verdicts else ".")
    )
    if has_mcs:
        text += " The Model Confidence Set (Calibration, above) compares all models at once."
    return text


def _pivot(table: pd.DataFrame | None, period: str, value: str, title: str, fmt: str) -> str:
    if table is None or table.empty:
        return ""
    part = table[table["PERIOD"] == period]
    wide = part.pivot_table(index=["MODEL", "HORIZON"], columns="QUANTILE", values=value)
    header = "| model | h | " + " | ".join(f"q{q:g}" for q in wide.columns) + " |"
    lines = [f"**{title}**\n", header, "|---|---:|" + "---:|" * len(wide.columns)]
    for (model, horizon), row in wide.iterrows():
        lines.append(f"| {model} | {horizon} | " + " | ".join(format(v, fmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _simple(table: pd.DataFrame | None, period: str, values: list[str], title: str) -> str:
    if table is None or table.empty:
        return ""
    part = table[table["PERIOD"] == period]
    lines = [
        f"**{title}**\n",
        "| model | h | " + " | ".join(v.lower() for v in values) + " |",
        "|---|---:|" + "---:|" * len(values),
    ]
    for _, row in part.sort_values(["MODEL", "HORIZON"]).iterrows():
        lines.append(
            f"| {row['MODEL']} | {row['HORIZON']} | "
            + " | ".join(f"{row[v]:.3f}" for v in values)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _ordered(names: Any) -> list[str]:
    from pipeline.models.plugins.registry import order

    return order(names)
