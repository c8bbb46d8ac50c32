"""Many Diebold-Mariano comparisons reported honestly: the Holm-adjusted p-value (P_HOLM) of
the DM tables against statsmodels' `multipletests` and a transcription of Holm (1979), one
family per benchmark and period, and how metrics.json, the report and the results page show
it beside the raw p-value."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from pipeline.evaluation.dm import holm, with_holm
from pipeline.evaluation.metrics import metric_tables
from pipeline.evaluation.metrics_json import compute_metrics
from pipeline.evaluation.report import render_report
from pipeline.evaluation.report_rows import dm_rows
from pipeline.evaluation.results_accuracy import reading_section as _reading_section
from pipeline.schema import conform_forecasts


def holm_by_hand(p: np.ndarray) -> np.ndarray:
    """Holm (1979), transcribed: the i-th smallest of m p-values times (m - i + 1), made
    non-decreasing in that order, capped at 1."""
    order = np.argsort(p, kind="stable")
    m = p.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(scaled)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_holm_equals_statsmodels_and_the_transcription_with_nan_left_out(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 60))
    # a mix of nulls (uniform) and effects (p near 0), some NaN (no test)
    p = np.where(rng.random(m) < 0.3, rng.beta(0.3, 8.0, m), rng.random(m))
    p[rng.random(m) < 0.2] = np.nan
    got = holm(p)
    finite = np.isfinite(p)
    assert np.array_equal(np.isnan(got), ~finite)  # NaN stays NaN
    if finite.sum():
        want = multipletests(p[finite], method="holm")[1]  # the family: the finite ones only
        np.testing.assert_allclose(got[finite], want, rtol=0, atol=1e-15)
        np.testing.assert_allclose(got[finite], holm_by_hand(p[finite]), rtol=1e-12)
    assert (got[finite] >= p[finite]).all()


def test_a_nan_does_not_count_in_the_family() -> None:
    # two tests, not three: 0.01 -> 0.02 (x2), 0.04 -> max(0.02, 0.04)
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    np.testing.assert_array_equal(holm([0.03]), [0.03])  # a family of one is itself
    assert holm(np.array([])).size == 0 and np.isnan(holm([np.nan])).all()


def dm_frame(seed: int = 0) -> pd.DataFrame:
    """The benchmark and three models, horizons 1 and 3, two countries, 2018-2022 (COVID months
    inside): `good` beats the benchmark clearly, `bad` trails it, `same` is noise."""
    rng = np.random.default_rng(seed)
    origins = pd.date_range("2018-01-01", "2022-06-01", freq="MS")
    levels = (0.1, 0.5, 0.9)
    rows = []
    for country in ("AT", "DE"):
        for horizon in (1, 3):
            actual = rng.normal(size=origins.size)
            for model, spread in (("ar_qr", 1.0), ("good", 0.6), ("bad", 1.6), ("same", 1.0)):
                noise = rng.normal(scale=spread, size=origins.size)
                for origin, y, e in zip(origins, actual, noise, strict=True):
                    for q in levels:
                        rows.append(
                            {
                                "TIME": origin + pd.DateOffset(months=horizon),
                                "COUNTRY": country,
                                "TARGET": "y",
                                "MODEL": model,
                                "QUANTILE": q,
                                "HORIZON": horizon,
                                "WINDOW_START": origin - pd.DateOffset(months=23),
                                "WINDOW_END": origin,
                                "FORECAST": y + e + (q - 0.5) * 2.0,
                                "ACTUAL": y,
                            }
                        )
    return conform_forecasts(pd.DataFrame(rows))


DM_SEED = 9  # a draw where one comparison has p < 0.05 alone and not after the adjustment


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return metric_tables(dm_frame(DM_SEED), "ar_qr")


@pytest.mark.parametrize("name", ["dm", "dm_by_quantile"])
def test_the_dm_tables_adjust_one_family_per_period(
    tables: dict[str, pd.DataFrame], name: str
) -> None:
    """The family is every comparison against the benchmark in one period (models x horizons,
    x levels in dm_by_quantile): not the two periods together, not one horizon."""
    table = tables[name]
    assert list(table.columns[-2:]) == ["P_VALUE", "P_HOLM"]
    for period in ("all", "ex_covid"):
        part = table[table["PERIOD"] == period]
        assert len(part) == 6 * (3 if name == "dm_by_quantile" else 1)
        want = multipletests(part["P_VALUE"].to_numpy(), method="holm")[1]
        np.testing.assert_allclose(part["P_HOLM"].to_numpy(), want, rtol=0, atol=1e-15)
    all_months = table[table["PERIOD"] == "all"]
    assert (all_months["P_HOLM"] > all_months["P_VALUE"]).any()  # the adjustment bites here


def test_metrics_json_keeps_both_p_values(tables: dict[str, pd.DataFrame]) -> None:
    frame = dm_frame(DM_SEED)
    metrics = compute_metrics(frame, "ar_qr", tables=tables)
    dm = tables["dm"]
    for row in dm.itertuples():
        leaf = metrics[row.PERIOD]["dm"][row.MODEL][f"h{row.HORIZON}"]
        assert leaf["p_value"] == pytest.approx(row.P_VALUE, rel=1e-5)
        assert leaf["p_holm"] == pytest.approx(row.P_HOLM, rel=1e-5)


def test_the_report_colours_significance_after_the_adjustment_and_says_so() -> None:
    table = pd.DataFrame(
        {
            "MODEL": ["a", "b", "c", "d"],
            "HORIZON": [1, 1, 1, 1],
            "N": 10,
            "MONTHS": 10,
            "MEAN_DIFF": [-1.0, 1.0, -0.5, 0.5],
            "STAT": [-4.0, 4.0, -2.2, 1.0],
            "P_VALUE": [0.001, 0.002, 0.03, 0.3],
            "P_HOLM": [0.004, 0.006, 0.06, 0.3],
        }
    )
    header, rows = dm_rows(table)
    assert header[4:6] == ["p-value", "Holm p"]
    css = {row[0].text: [c.css for c in row[3:6]] for row in rows}
    assert css == {
        "a": ["good", "good", "good"],  # better, after the adjustment too
        "b": ["bad", "bad", "bad"],
        "c": ["weak-good", "weak-good", ""],  # raw p < 0.05 only: pale, Holm p plain
        "d": ["", "", ""],
    }
    empty = {
        "pinball": ["MODEL", "HORIZON", "QUANTILE", "N", "PINBALL"],
        "relative_pinball": ["MODEL", "HORIZON", "QUANTILE", "N", "PINBALL", "BENCHMARK_PINBALL",
                             "RELATIVE_PINBALL"],
        "coverage": ["MODEL", "HORIZON", "QUANTILE", "N", "COVERAGE"],
        "interval": ["MODEL", "HORIZON", "N", "COVERAGE", "NOMINAL", "WIDTH"],
        "crps": ["MODEL", "HORIZON", "N", "CRPS"],
        "crossing": ["MODEL", "HORIZON", "N", "CROSSING_RATE"],
        "pinball_by_country": ["MODEL", "COUNTRY", "N", "PINBALL"],
    }  # fmt: skip
    tables = {name: pd.DataFrame(columns=["PERIOD", *cols]) for name, cols in empty.items()}
    tables["dm"] = pd.concat([table.assign(PERIOD=p) for p in ("all", "ex_covid")])
    page = render_report(tables, [], title="t", summary={})
    section = page.split('<section id="dm">')[1].split("</section>")[0]
    assert "Holm" in section and "family" in section and "Pale italic" in section
    assert "Model Confidence Set" not in section  # no MCS section to point to
    assert section.count('class="weak-good"') == 2 * 2  # two cells per period
    assert "td.weak-good" in page and "td.weak-bad" in page  # styled


def test_the_reading_counts_both_and_names_only_what_survives(
    tables: dict[str, pd.DataFrame],
) -> None:
    text = _reading_section({"dm": tables["dm"]}, pd.DataFrame({"status": ["done"]}), "ar_qr")
    line = next(s for s in text.splitlines() if "Diebold-Mariano" in s)
    part = tables["dm"][tables["dm"]["PERIOD"] == "all"]
    raw = int((part["P_VALUE"] < 0.05).sum())
    held = multipletests(part["P_VALUE"].to_numpy(), alpha=0.05, method="holm")[0]
    assert raw > held.sum() > 0  # the two counts differ in this draw
    assert f"{raw} of 6 model x horizon comparisons have p < 0.05 one at a time" in line
    assert f"{int(held.sum())} stay significant at 5% after Holm's adjustment for the 6" in line
    named = re.findall(r"`(\w+)` h=(\d+)", line)
    assert sorted(named) == sorted(
        (r.MODEL, str(r.HORIZON)) for r, keep in zip(part.itertuples(), held, strict=True) if keep
    )


def test_an_older_output_dir_gets_the_same_adjustment(tables: dict[str, pd.DataFrame]) -> None:
    """The results page of a run from before P_HOLM computes it as the DM table would."""
    old = tables["dm"].drop(columns="P_HOLM")
    pd.testing.assert_frame_equal(with_holm(old), tables["dm"])
