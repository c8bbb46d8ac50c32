"""The crossing rate and the pooled summaries against an independent oracle: plain pandas on
the forecast table, from the definitions (metrics.py's docstring; a pooled mean is the mean
over every row, forecast or forecast pair behind it), never through pipeline.evaluation.

Checked: metrics.json (n_rows, n_scored, the "mean" keys of pinball, relative pinball and
CRPS, crossing rates), metrics_summary.json, metrics_headline.json and the report's pooled
cells (the pinball and relative pinball "mean" columns, CRPS, the crossing rates, the country
table), on random frames (ties, NaN forecasts and actuals, crossed fans, rows missing,
COVID months) and on the outputs of a seeded small study run through the command line, whose
results page (the reading's averages over cells, the Calibration table's pooled pinball) is
checked too.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.metrics import metric_tables
from pipeline.evaluation.metrics_json import compute_metrics, headline_metrics, summary_metrics
from pipeline.evaluation.report import render_report
from pipeline.schema import conform_forecasts

BENCH = "rw"  # the benchmark of the random frames and of the study
FORECAST_KEY = ["MODEL", "COUNTRY", "HORIZON", "WINDOW_END"]
ROW_KEY = ["COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END"]


# --- the oracle: pandas from the definitions --------------------------------------------------
def in_period(frame: pd.DataFrame, period: str) -> pd.DataFrame:
    """`ex_covid` drops the rows whose TIME is in 2020-03 .. 2021-12."""
    if period == "all":
        return frame
    covid = (frame["TIME"] >= "2020-03-01") & (frame["TIME"] <= "2021-12-01")
    return frame[~covid]


def scored(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with an actual and a forecast, with their pinball loss."""
    rows = frame[frame["ACTUAL"].notna() & frame["FORECAST"].notna()]
    u = rows["ACTUAL"] - rows["FORECAST"]
    q = rows["QUANTILE"]
    return rows.assign(LOSS=np.maximum(q * u, (q - 1) * u))


def oracle(frame: pd.DataFrame, period: str) -> dict[str, pd.Series]:
    """Every pooled number of one period, each a Series keyed by (MODEL,) or (MODEL, HORIZON)."""
    frame = in_period(frame, period)
    rows = scored(frame)
    out: dict[str, pd.Series] = {"n": pd.Series({"rows": len(frame), "scored": len(rows)})}
    for by, tag in ((["MODEL", "HORIZON"], "mh"), (["MODEL"], "m")):
        out[f"pinball_{tag}"] = rows.groupby(by)["LOSS"].mean()
        # relative: summed loss over the benchmark's on the rows both scored
        bench = rows.loc[rows["MODEL"] == BENCH, [*ROW_KEY, "LOSS"]]
        pairs = rows.merge(bench, on=ROW_KEY, suffixes=("", "_B"))
        sums = pairs.groupby(by)[["LOSS", "LOSS_B"]].sum()
        out[f"relative_{tag}"] = sums["LOSS"] / sums["LOSS_B"]
        # CRPS: 2 x each forecast's mean loss over its scored levels, averaged over forecasts
        per_forecast = rows.groupby(FORECAST_KEY)["LOSS"].mean().mul(2).reset_index()
        out[f"crps_{tag}"] = per_forecast.groupby(by)["LOSS"].mean()
        # crossing: forecasts (rows with a FORECAST) whose values fall as the level rises
        fans = frame[frame["FORECAST"].notna()].sort_values([*FORECAST_KEY, "QUANTILE"])
        falls = fans.groupby(FORECAST_KEY, dropna=False)["FORECAST"].apply(
            lambda f: bool((np.diff(f.to_numpy()) < 0).any())
        )
        out[f"crossing_{tag}"] = falls.reset_index().groupby(by)["FORECAST"].mean()
        out[f"forecasts_{tag}"] = falls.reset_index().groupby(by).size()
        # central interval: each forecast's row at its model's lowest scored level paired with
        # the one at the highest; covered when lower <= actual <= upper
        levels = rows.groupby("MODEL")["QUANTILE"].agg(["min", "max"])
        lo = rows[rows["QUANTILE"] == rows["MODEL"].map(levels["min"])]
        hi = rows[rows["QUANTILE"] == rows["MODEL"].map(levels["max"])]
        pair = lo.merge(hi, on=FORECAST_KEY, suffixes=("", "_HI"))
        pair = pair[pair["QUANTILE"] < pair["QUANTILE_HI"]]
        hit = (pair["FORECAST"] <= pair["ACTUAL"]) & (pair["ACTUAL"] <= pair["FORECAST_HI"])
        out[f"interval_{tag}"] = pair.assign(HIT=hit).groupby(by)["HIT"].mean()
    out["pinball_country"] = rows.groupby(["COUNTRY", "MODEL"])["LOSS"].mean()
    return out


Wants = dict[str, dict[str, pd.Series]]  # period -> the oracle's numbers


def oracles(frame: pd.DataFrame) -> Wants:
    return {period: oracle(frame, period) for period in ("all", "ex_covid")}


def close(got: float | None, want: float, rel: float = 1e-5) -> bool:
    """metrics*.json keep 6 significant digits (NaN as null)."""
    if not np.isfinite(want):
        return got is None
    return got is not None and abs(got - want) <= rel * abs(want) + 1e-12


# --- what the pipeline reports --------------------------------------------------------------
def check_json(wants: Wants, metrics: dict, summary: dict, headline: dict) -> int:
    """Every pooled number of the three JSON files against the oracle; the count checked."""
    checked = 0
    for period in ("all", "ex_covid"):
        want, got = wants[period], metrics[period]
        assert (got["n_rows"], got["n_scored"]) == tuple(want["n"])
        for (model, horizon), value in want["pinball_mh"].items():
            assert close(got["pinball"][model][f"h{horizon}"]["mean"], value), (model, horizon)
            assert close(got["relative_pinball"][model][f"h{horizon}"]["mean"],
                         want["relative_mh"][(model, horizon)])  # fmt: skip
            assert close(got["crps"][model][f"h{horizon}"], want["crps_mh"][(model, horizon)])
            checked += 3
        for (model, horizon), value in want["crossing_mh"].items():
            assert close(got["crossing_rate"][model][f"h{horizon}"], value), (model, horizon)
            checked += 1
        for model, value in want["pinball_m"].items():
            node = summary[period][model]
            assert close(got["pinball"][model]["mean"], value) and close(node["pinball"], value)
            relative = want["relative_m"][model]
            assert close(got["relative_pinball"][model]["mean"], relative)
            assert close(node["relative_pinball"], relative)
            assert close(got["crps"][model]["mean"], want["crps_m"][model])
            assert close(node["crps"], want["crps_m"][model])
            assert close(node["crossing_rate"], want["crossing_m"][model])
            assert close(node["interval_coverage"], want["interval_m"][model])
            if period == "all":
                assert close(headline["pinball"][model], value)
                assert close(headline["coverage"][model], want["interval_m"][model])
            checked += 8
    return checked


class Tables(HTMLParser):
    """The report's tables as {section id: [table, ...]}, a table being rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[list[str]]]] = {}
        self.section, self.cell = "", None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id", "")
        elif tag == "table":
            self.sections.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.sections[self.section][-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.sections[self.section][-1][-1].append(self.cell)
            self.cell = None


def check_crossing_table(wants: Wants, table: pd.DataFrame) -> float:
    """The crossing table (both periods): its rates, and N = the forecasts with a forecast
    value, against the oracle's; the highest rate."""
    got = table.set_index(["PERIOD", "MODEL", "HORIZON"]).sort_index()
    for period in ("all", "ex_covid"):
        want = wants[period]
        rate, n = want["crossing_mh"].sort_index(), want["forecasts_mh"].sort_index()
        np.testing.assert_allclose(got.loc[period, "CROSSING_RATE"], rate, rtol=1e-12)
        np.testing.assert_array_equal(got.loc[period, "N"], n)
    return float(got["CROSSING_RATE"].max())


def shown(text: str, want: float, digits: int = 4, percent: bool = False) -> bool:
    """A report cell (`digits` significant digits, or a percent to 0.1) shows `want`: within
    half a unit of its last digit (a sum in another order may round the other way)."""
    if percent:
        return abs(float(text.rstrip("%")) - 100 * want) <= 0.05 + 1e-9
    unit = 10.0 ** (np.floor(np.log10(abs(want))) - digits + 1) if want else 0.0
    return abs(float(text) - want) <= 0.5 * unit + 1e-12


def check_report(wants: Wants, page: str) -> int:
    """The report's pooled cells against the oracle's, per period (tables side by side)."""
    parser = Tables()
    parser.feed(page)
    checked = 0
    for index, period in enumerate(("all", "ex_covid")):
        want = wants[period]
        for section, key, digits in (("pinball", "pinball_mh", 4), ("relative", "relative_mh", 3)):
            header, *rows = parser.sections[section][index]
            assert header[-1] == "mean"
            seen = {(row[0], int(row[1][1:])): row[-1] for row in rows}
            assert set(seen) == set(want[key].index)
            for cell, value in want[key].items():
                assert shown(seen[cell], value, digits), (section, period, cell)
                checked += 1
        header, *rows = parser.sections["crps"][index]
        assert header[2:] == ["CRPS ≈", "crossing rate"]
        cells = {(row[0], int(row[1][1:])): row[2:] for row in rows}
        for cell, value in want["crossing_mh"].items():
            assert shown(cells[cell][1], value, percent=True), (period, cell)
            checked += 1
        for cell, value in want["crps_mh"].items():
            assert shown(cells[cell][0], value), (period, cell)
            checked += 1
        header, *rows = parser.sections["country"][index]
        for row in rows:
            for model, text in zip(header[1:], row[1:], strict=True):
                value = want["pinball_country"].get((row[0], model), np.nan)
                assert text == "–" if not np.isfinite(value) else shown(text, value)
                checked += 1
    return checked


# --- random frames --------------------------------------------------------------------------
def random_frame(seed: int) -> pd.DataFrame:
    """Four models (one the benchmark) over countries, horizons, levels and origins around the
    COVID months: actuals missing for some months, forecasts missing here and there, rows
    dropped, ties and crossed fans (some models cross on purpose), values on a coarse grid
    (ties between a forecast and its actual, between levels)."""
    rng = np.random.default_rng(seed)
    origins = pd.date_range("2019-01-01", periods=int(rng.integers(20, 40)), freq="MS")
    countries = [f"C{i}" for i in range(int(rng.integers(2, 5)))]
    levels = sorted(rng.choice([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95], 3, replace=False))
    rows = []
    for model, cross in ((BENCH, 0.0), ("ar_qr", 0.1), ("lqr", 0.4), ("qrf", 0.0)):
        for country in countries:
            for horizon in (1, 3, 6):
                for origin in origins:
                    time = origin + pd.DateOffset(months=horizon)
                    actual = np.round(rng.normal(), 1) if rng.random() > 0.1 else np.nan
                    centre, spread = np.round(rng.normal(), 1), np.round(rng.gamma(2.0, 0.3), 1)
                    fan = centre + spread * (np.array(levels) - 0.5) * 3
                    if rng.random() < cross:
                        fan = fan[rng.permutation(len(fan))]
                    for q, f in zip(levels, np.round(fan, 1), strict=True):
                        if rng.random() < 0.03:
                            continue  # a row missing
                        rows.append((time, country, "y", model, q, horizon,
                                     origin - pd.DateOffset(months=23), origin,
                                     np.nan if rng.random() < 0.03 else f, actual))  # fmt: skip
    columns = ["TIME", "COUNTRY", "TARGET", "MODEL", "QUANTILE", "HORIZON", "WINDOW_START",
               "WINDOW_END", "FORECAST", "ACTUAL"]  # fmt: skip
    return conform_forecasts(pd.DataFrame(rows, columns=columns))


@pytest.mark.parametrize("seed", range(4))
def test_pooled_summaries_and_crossing_on_random_frames(seed: int) -> None:
    frame = random_frame(seed)
    tables = metric_tables(frame, BENCH)
    metrics = compute_metrics(frame, BENCH, tables=tables)
    summary = summary_metrics(frame, BENCH, tables=tables)
    headline = headline_metrics(summary, tables)
    wants = oracles(frame)
    assert check_json(wants, metrics, summary, headline) > 100
    assert check_crossing_table(wants, tables["crossing"]) > 0.1  # crossed fans to count
    page = render_report(tables, [], title="t", summary={}, benchmark=BENCH)
    assert check_report(wants, page) > 50


def test_a_missing_key_is_a_forecast_of_its_own() -> None:
    """A row without COUNTRY still has a forecast: the crossing rate counts its fan."""
    frame = random_frame(0)
    frame.loc[frame["COUNTRY"] == "C0", "COUNTRY"] = pd.NA
    assert check_crossing_table(oracles(frame), metric_tables(frame, BENCH)["crossing"]) > 0.1


# --- a seeded small study, end to end through the command line ---------------------------------
# `oracle_study` (tests/conftest.py): rw, climatology, their combo and the tracker's `_cal`
# variants on the synthetic panel, horizons 1 and 3, origins 2019-07 .. 2021-06, run once per
# session and shared with test_coverage_holm.py (read-only)
MEMBERS = ("rw", "climatology", "combo")


def test_a_small_studys_outputs_match_the_oracle(oracle_study: Path) -> None:
    frame = pd.read_parquet(oracle_study / "forecasts/all.parquet")
    assert set(frame["MODEL"]) == {*MEMBERS, *(f"{m}_cal" for m in MEMBERS)}
    assert len(in_period(frame, "ex_covid")) < len(frame)  # both periods have rows of their own
    metrics = json.loads((oracle_study / "metrics.json").read_text())
    summary = json.loads((oracle_study / "metrics_summary.json").read_text())
    headline = json.loads((oracle_study / "metrics_headline.json").read_text())
    wants = oracles(frame)
    assert check_json(wants, metrics, summary, headline) > 50
    crossing = pd.read_parquet(oracle_study / "reports/tables/crossing.parquet")
    assert check_crossing_table(wants, crossing) == 0  # every fan rearranged
    assert check_report(wants, (oracle_study / "reports/index.html").read_text()) > 50


def test_the_small_studys_dm_table_adjusts_each_period_as_one_family(oracle_study: Path) -> None:
    from statsmodels.stats.multitest import multipletests

    dm = pd.read_parquet(oracle_study / "reports/tables/dm.parquet")
    metrics = json.loads((oracle_study / "metrics.json").read_text())
    for period, part in dm.groupby("PERIOD"):
        assert len(part) == 5 * 2  # climatology, combo and the 3 _cal x h1, h3 against rw
        want = multipletests(part["P_VALUE"].to_numpy(), method="holm")[1]
        np.testing.assert_allclose(part["P_HOLM"].to_numpy(), want, rtol=0, atol=1e-15)
        for row, value in zip(part.itertuples(), want, strict=True):
            assert close(metrics[period]["dm"][row.MODEL][f"h{row.HORIZON}"]["p_holm"], value)
    page = (oracle_study / "reports/index.html").read_text()
    assert "<th>Holm p</th>" in page.replace(' class=""', "")
    assert '<a href="#mcs">' in page and '<section id="mcs">' in page  # the joint answer


def test_the_results_pages_summaries_match_the_oracle(oracle_study: Path, tmp_path: Path) -> None:
    """docs/RESULTS.md's reading of the study: each model's relative pinball averaged over its
    horizon x level cells (and their range), each horizon's mean pinball over levels, and the
    Calibration table's pooled pinball, all from the forecast table."""
    import re

    from pipeline.evaluation.results import render_results
    from pipeline.runtime.store.progress import db_path, read_table
    from pipeline.runtime.store.timings import read_timings

    frame = pd.read_parquet(oracle_study / "forecasts/all.parquet")
    progress = read_table(db_path(oracle_study), "progress")
    text = render_results(
        oracle_study, tmp_path / "RESULTS.md", timings=read_timings(oracle_study), progress=progress
    )
    cells = ["MODEL", "HORIZON", "QUANTILE"]
    for period in ("all", "ex_covid"):
        rows = scored(in_period(frame, period))
        bench = rows.loc[rows["MODEL"] == BENCH, [*ROW_KEY, "LOSS"]]
        sums = rows.merge(bench, on=ROW_KEY, suffixes=("", "_B")).groupby(cells)
        ratio = (
            (sums["LOSS"].sum() / sums["LOSS_B"].sum()).groupby("MODEL").agg(["mean", "min", "max"])
        )
        for model, (mean, low, high) in ratio.drop(index=BENCH).iterrows():
            said = re.search(
                rf"^- {period}: `{model}` \w+ `{BENCH}` on average \(relative pinball ([\d.]+), "
                r"range ([\d.]+) \.\. ([\d.]+) over horizon x quantile cells\)\.$",
                text,
                re.M,
            )
            assert said, (period, model)
            for shown_value, value in zip(said.groups(), (mean, low, high), strict=True):
                assert abs(float(shown_value) - value) <= 5e-4 + 1e-12, (period, model)
    rows = scored(frame)
    by_horizon = rows.groupby(cells)["LOSS"].mean().groupby(["HORIZON", "MODEL"]).mean()
    for horizon, per_model in by_horizon.groupby(level="HORIZON"):
        line = next(s for s in text.splitlines() if s.startswith(f"- h = {horizon}: lowest"))
        said = dict(re.findall(r"`(\w+)` \(?(\d+\.\d+)", line))
        for (_, model), value in per_model.items():
            assert abs(float(said[model]) - value) <= 5e-4 + 1e-12, (horizon, model)
    pooled = rows.groupby("MODEL")["LOSS"].mean()
    table = text.split("| model | h | hit")[1].split("\n\n")[0]  # the Calibration table
    assert len(table.splitlines()) == 2 + 6 * 2  # its header's end, a rule, model x horizon
    for line in table.splitlines()[2:]:
        model, *_, value = (c.strip() for c in line.strip("|").split("|"))
        assert abs(float(value) - pooled[model]) <= 5e-5 + 1e-12, model
