"""The coverage tests' many p-values counted honestly: each test's Holm-adjusted p-value
(P_UC_HOLM, P_IND_HOLM, P_CC_HOLM, P_DQ_HOLM) against statsmodels' `multipletests`, one family
per test, table and period (NaN left out), and how the results page, the report and
metrics.json show it beside the raw one; on random frames and on a seeded small study."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from pipeline.evaluation import coverage_tests as ct
from pipeline.evaluation.pvalues import holm
from pipeline.evaluation.report_rows import coverage_test_rows
from pipeline.evaluation.results_calibration import calibration_section

POOLED = ["MODEL", "HORIZON", "QUANTILE"]
BY_COUNTRY = ["MODEL", "COUNTRY", "HORIZON", "QUANTILE"]


def want_holm(p: pd.Series) -> np.ndarray:
    """statsmodels' Holm over the finite p-values of one family; NaN where there is no test."""
    p = p.to_numpy(np.float64)
    out = np.full(p.size, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_holm_is_statsmodels_bit_for_bit(seed: int) -> None:
    """The transcription in pvalues (no statsmodels import) gives multipletests' very floats,
    ties, zeros, ones and NaN included."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 80))
    p = np.where(rng.random(m) < 0.4, rng.beta(0.3, 8.0, m), rng.random(m))
    p[rng.random(m) < 0.2] = p[0] if m else 0.0  # ties
    p[rng.random(m) < 0.05] = 0.0
    p[rng.random(m) < 0.05] = 1.0
    p[rng.random(m) < 0.15] = np.nan
    np.testing.assert_array_equal(holm(p), want_holm(pd.Series(p, dtype=np.float64)))


def frame(seed: int, n: int = 30) -> pd.DataFrame:
    """Three models (one right, one shifted, one a little off), two countries, levels 0.1 and
    0.9, horizons 1 and 3; one country's sequence of model c too short for the DQ test."""
    rng = np.random.default_rng(seed)
    ends = pd.date_range("2018-01-01", periods=n, freq="MS")
    parts = []
    for model, shift in (("a", 0.0), ("b", 1.5), ("c", 0.3)):
        for country in ("AT", "BE"):
            y = rng.normal(size=n)
            for horizon in (1, 3):
                for q, z in ((0.1, -1.2816), (0.9, 1.2816)):
                    keep = 5 if (model, country) == ("c", "BE") else n  # DQ: NaN
                    parts.append(
                        pd.DataFrame(
                            {
                                "MODEL": model,
                                "COUNTRY": country,
                                "HORIZON": horizon,
                                "QUANTILE": q,
                                "WINDOW_END": ends[:keep],
                                "FORECAST": z + shift + rng.normal(scale=0.2, size=n)[:keep],
                                "ACTUAL": y[:keep],
                            }
                        )
                    )
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("by", [POOLED, BY_COUNTRY], ids=["pooled", "by_country"])
@pytest.mark.parametrize("seed", range(3))
def test_each_tests_family_is_the_tables_cells(seed: int, by: list[str]) -> None:
    table = ct.coverage_tests(frame(seed), by=by)
    assert list(table.columns[-4:]) == list(ct.HOLM_COLUMNS.values())
    for p, adjusted in ct.HOLM_COLUMNS.items():
        np.testing.assert_array_equal(table[adjusted].to_numpy(), want_holm(table[p]))
    if by == BY_COUNTRY:
        assert table["P_DQ_HOLM"].isna().sum() == table["P_DQ"].isna().sum() > 0
    assert (table["P_UC_HOLM"] > table["P_UC"]).any()  # the adjustment bites


def test_an_older_table_gets_the_same_columns_per_period() -> None:
    """with_holm on a table written before the columns (both periods): one family per PERIOD,
    the same values coverage_tests gives each period's call."""
    data = frame(0)
    parts = [
        ct.coverage_tests(data if period == "all" else data[data["WINDOW_END"] > "2019-01-01"],
                          by=POOLED).assign(PERIOD=period)
        for period in ("all", "ex_covid")
    ]  # fmt: skip
    new = pd.concat(parts, ignore_index=True)
    new = new[["PERIOD", *new.columns[:-1]]]  # the stage's layout: PERIOD first
    old = new.drop(columns=list(ct.HOLM_COLUMNS.values()))
    pd.testing.assert_frame_equal(ct.with_holm(old), new)
    assert ct.with_holm(new) is new and ct.with_holm(None) is None


def test_the_report_flags_after_the_adjustment() -> None:
    table = ct.coverage_tests(frame(2), by=POOLED)
    header, rows = coverage_test_rows(table)
    assert header[5:] == [f"{k} {t}" for t in ("UC", "IND", "CC", "DQ") for k in ("p", "Holm p")]
    ordered = table.sort_values(POOLED).reset_index(drop=True)
    seen = set()
    for row, cells in zip(ordered.itertuples(), rows, strict=True):
        for i, p in enumerate(ct.P_COLUMNS):
            raw, adjusted = getattr(row, p), getattr(row, ct.HOLM_COLUMNS[p])
            want = "bad" if adjusted < 0.05 else "weak-bad" if raw < 0.05 else ""
            assert cells[5 + 2 * i].css == want
            assert cells[6 + 2 * i].css == ("bad" if adjusted < 0.05 else "")
            seen.add(want)
    assert seen == {"bad", "weak-bad", ""}  # every case met on this draw


def test_the_results_page_counts_both_ways() -> None:
    data = frame(2)
    tests = ct.coverage_tests(data, by=POOLED).assign(PERIOD="all")
    coverage = tests[["PERIOD", *POOLED]].assign(COVERAGE=tests["HIT_RATE"])
    pinball = tests[["PERIOD", *POOLED]].assign(PINBALL=1.0, N=tests["N"])
    text = calibration_section(
        {"coverage": coverage, "pinball": pinball, "coverage_tests": tests},
        Path("/nonexistent"),
        Path("/nonexistent/doc.md"),
    )
    for name, p in (("UC", "P_UC"), ("CC", "P_CC"), ("DQ", "P_DQ")):
        raw = int((tests[p] < 0.05).sum())
        held = int((want_holm(tests[p]) < 0.05).sum())
        m = int(tests[p].notna().sum())
        assert held < raw or name != "UC"
        line = (f"- {name}: {raw} of {m} cells have p < 0.05 one at a time (about "
                f"{0.05 * m:.1f} would by chance alone if every forecast were correct); "
                f"{held} after Holm's adjustment for the {m}.")  # fmt: skip
        assert line in text.splitlines(), name
    row = re.search(r"^\| b \| (\d+) \| (\d+) \| (\d+) \|", text, re.M)
    b = tests[tests["MODEL"] == "b"]
    assert row and [int(g) for g in row.groups()] == [
        len(b), int((b["P_UC"] < 0.05).sum()), int((want_holm(tests["P_UC"])[b.index] < 0.05).sum())
    ]  # fmt: skip


# `oracle_study` (tests/conftest.py): rw, climatology, their combo and the tracker's `_cal`
# variants on the synthetic panel, horizons 1 and 3, origins 2019-07 .. 2021-06, run once per
# session and shared with test_oracle_pooled.py (read-only)


def test_a_small_studys_outputs_adjust_one_family_per_test_table_and_period(
    oracle_study: Path, tmp_path: Path
) -> None:
    from pipeline.cli import main

    tables = oracle_study / "reports/tables"
    for name, cells in (
        ("coverage_tests", 6 * 2 * 3),
        ("coverage_tests_by_country", 6 * 3 * 2 * 3),
    ):
        table = pd.read_parquet(tables / f"{name}.parquet")
        for period, part in table.groupby("PERIOD"):
            assert len(part) == cells, (name, period)  # 6 models x 2 horizons x 3 levels (x 3)
            for p, adjusted in ct.HOLM_COLUMNS.items():
                np.testing.assert_array_equal(part[adjusted].to_numpy(), want_holm(part[p]))
    pooled = pd.read_parquet(tables / "coverage_tests.parquet")
    metrics = json.loads((oracle_study / "metrics.json").read_text())["coverage_tests"]
    for row in pooled[pooled["PERIOD"] == "all"].itertuples():
        leaf = metrics[row.MODEL][f"h{row.HORIZON}"][f"q{row.QUANTILE:g}"]
        for p, adjusted in ct.HOLM_COLUMNS.items():
            for key, value in (
                (p.lower(), getattr(row, p)),
                (adjusted.lower(), getattr(row, adjusted)),
            ):
                assert leaf[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key
    page = (oracle_study / "reports/index.html").read_text()
    assert "<th>Holm p UC</th>" in page.replace(' class=""', "")
    assert "Red: p &lt; 0.05 after the adjustment" in page
    doc = tmp_path / "RESULTS.md"
    assert main(["results", "--output-dir", str(oracle_study), "--out", str(doc)]) == 0
    part = pooled[pooled["PERIOD"] == "all"]
    raw, held = int((part["P_CC"] < 0.05).sum()), int((part["P_CC_HOLM"] < 0.05).sum())
    assert f"- CC: {raw} of 36 cells have p < 0.05 one at a time" in doc.read_text()
    assert f"; {held} after Holm's adjustment for the 36." in doc.read_text()


ONE_MODEL = """
import sys
import numpy as np, pandas as pd
from pipeline.evaluation import coverage_tests
rng = np.random.default_rng(0)
ends = pd.date_range("2010-01-01", periods=40, freq="MS")
frame = pd.concat([
    pd.DataFrame({"MODEL": "ar_qr", "COUNTRY": "DE", "HORIZON": h, "QUANTILE": q,
                  "WINDOW_END": ends, "FORECAST": rng.normal(size=40), "ACTUAL": rng.normal(size=40)})
    for h in (1, 3) for q in (0.1, 0.5, 0.9)
])
table = coverage_tests.coverage_tests(frame, by=["MODEL", "HORIZON", "QUANTILE"])
print(len(table), table["P_UC_HOLM"].notna().sum(), "statsmodels" in sys.modules)
"""


def test_a_one_model_studys_adjustment_imports_no_statsmodels() -> None:
    """Six cells, one family of six: adjusted without statsmodels' import (0.5 CPU-s,
    benchmarks/README.md), which a one-model study's assemble otherwise never pays."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", ONE_MODEL], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == ["6", "6", "False"], done.stderr[-3000:]
