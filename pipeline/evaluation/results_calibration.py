"""The results page's calibration section: tail hit rates of every model and `_cal` variant
against the target, pooled pinball raw vs calibrated, coverage-test rejections, the pinball
decomposition, the Model Confidence Set and the reliability chart (pipeline.evaluation.results
assembles the page)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.evaluation.coverage_tests import HOLM_COLUMNS, with_holm
from pipeline.evaluation.decomposition import decomposition_markdown

CAL_TOLERANCE = 0.05  # the target: every calibrated variant within 5 pp of nominal


def calibration_section(tables: dict[str, pd.DataFrame], output_dir: Path, doc_path: Path) -> str:
    """Tail hit rates per horizon for every model and its _cal variant, pooled pinball raw vs
    calibrated, coverage-test rejections (raw and Holm-adjusted), the MCS and the reliability chart."""
    coverage, pinball = tables.get("coverage"), tables.get("pinball")
    if coverage is None or coverage.empty or pinball is None:
        return ""
    cov = coverage[coverage["PERIOD"] == "all"]
    levels = sorted(cov["QUANTILE"].unique().tolist())
    tails = [levels[0], levels[-1]] if len(levels) > 1 else levels
    lines = ["## Calibration\n"]
    lines.append(
        "Hit rate = share of outcomes at or below the quantile forecast, pooled over countries "
        f"(all months). `_cal` rows are the recalibrated variants; the target is each `_cal` within "
        f"{CAL_TOLERANCE:.0%} (5 pp) of nominal at both tails for every horizon, with pooled "
        "pinball no worse than its raw model's.\n"
    )
    wide = cov.pivot_table(index=["MODEL", "HORIZON"], columns="QUANTILE", values="COVERAGE")
    pooled = pinball[pinball["PERIOD"] == "all"].assign(W=lambda t: t["PINBALL"] * t["N"])
    pooled = pooled.groupby("MODEL")[["W", "N"]].sum()
    loss = pooled["W"] / pooled["N"]
    header = (
        "| model | h | " + " | ".join(f"hit q{q:g}" for q in tails) + " | within 5 pp | pinball |"
    )
    lines += [header, "|---|---:|" + "---:|" * len(tails) + "---|---:|"]
    for model in _ordered({m for m, _ in wide.index}):
        for horizon in sorted(h for m, h in wide.index if m == model):
            rates = [float(wide.loc[(model, horizon), q]) for q in tails]
            ok = all(abs(r - q) <= CAL_TOLERANCE + 1e-12 for r, q in zip(rates, tails, strict=True))
            lines.append(
                f"| {model} | {horizon} | "
                + " | ".join(f"{r:.3f}" for r in rates)
                + f" | {'yes' if ok else 'no'} | {loss.get(model, float('nan')):.4f} |"
            )
    cal_models = sorted(m for m in loss.index if str(m).endswith("_cal"))
    if cal_models:
        lines.append("")
        for cal in cal_models:
            raw = cal[: -len("_cal")]
            if raw in loss.index:
                verdict = "no worse" if loss[cal] <= loss[raw] else "worse"
                lines.append(
                    f"- `{cal}`: pooled pinball {loss[cal]:.4f} vs `{raw}` {loss[raw]:.4f} ({verdict})."
                )
    tests = with_holm(tables.get("coverage_tests"))
    if tests is not None and not tests.empty:
        lines += ["", _coverage_tests_counts(tests[tests["PERIOD"] == "all"])]
    decomposition = tables.get("pinball_decomposition")
    if decomposition is not None and not decomposition.empty:
        lines += ["", decomposition_markdown(decomposition)]
    mcs = tables.get("mcs")
    if mcs is not None and not mcs.empty:
        part = mcs[mcs["PERIOD"] == "all"]
        lines.append("")
        for horizon, rows in part.groupby("HORIZON"):
            members = ", ".join(f"`{m}`" for m in _ordered(rows.loc[rows["IN_MCS"], "MODEL"]))
            lines.append(f"- Model Confidence Set, h = {horizon}: {members}.")
    chart = output_dir / "reports/reliability.png"
    if chart.exists():
        img_dir = doc_path.parent / "img"
        img_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chart, img_dir / "results_reliability.png")
        lines.append("\n![reliability](img/results_reliability.png)\n")
    return "\n".join(lines) + "\n"


TESTS = {"UC": "P_UC", "CC": "P_CC", "DQ": "P_DQ"}  # the tests the page counts


def _coverage_tests_counts(part: pd.DataFrame) -> str:
    """Rejections at 5% per model and test, one at a time and after Holm's adjustment (the
    family: one test's model x horizon x level cells over all months), and per test how many
    of its cells reject, against the number chance alone gives if every forecast were right."""
    lines = [
        "**Coverage tests** (pooled over countries; rejections at 5% of the model x horizon x "
        "level cells, one at a time and after Holm's adjustment for the number of cells a test "
        "has over all months; full table with the adjusted p-values in "
        "`reports/tables/coverage_tests.parquet`, per country in "
        "`coverage_tests_by_country.parquet`). Hits of h > 1 forecasts from monthly origins "
        "overlap, so they are serially dependent by construction: the IND and DQ tests "
        "over-reject correct forecasts there.\n",
        "| model | cells | " + " | ".join(f"{t} rejects | {t} after Holm" for t in TESTS) + " |",
        "|---|---:|" + "---:|---:|" * len(TESTS),
    ]
    for model in _ordered(part["MODEL"].unique()):
        rows = part[part["MODEL"] == model]
        counts = [int((rows[c] < 0.05).sum()) for p in TESTS.values() for c in (p, HOLM_COLUMNS[p])]
        lines.append(f"| {model} | {len(rows)} | " + " | ".join(map(str, counts)) + " |")
    lines.append("")
    for test, p in TESTS.items():
        tested = int(part[p].notna().sum())
        raw, held = (int((part[c] < 0.05).sum()) for c in (p, HOLM_COLUMNS[p]))
        lines.append(
            f"- {test}: {raw} of {tested} cells have p < 0.05 one at a time (about "
            f"{0.05 * tested:.1f} would by chance alone if every forecast were correct); "
            f"{held} after Holm's adjustment for the {tested}."
        )
    return "\n".join(lines)


def _ordered(names: Any) -> list[str]:
    from pipeline.models.plugins.registry import order

    return order(names)
