"""The one-page HTML report: metric tables (all months and COVID excluded) and the charts.

`render_report` is pure (tables in, a string out) and deterministic: no timestamps, no external
resources (styles inline, no script, images by relative path), so the page opens offline and
rebuilding it from the same tables gives the same bytes. What each table's cells say and which
are flagged is `pipeline.evaluation.report_rows`; this module lays them out as the page.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation.coverage_tests import SERIAL_DEPENDENCE_NOTE, with_holm
from pipeline.evaluation.decomposition import DECOMPOSITION_NOTE, decomposition_cells
from pipeline.evaluation.report_rows import (
    COVERAGE_FLAG_SE,
    DM_LEVEL,
    TEST_LEVEL,
    Cell,
    Rows,
    country_rows,
    coverage_rows,
    coverage_test_rows,
    crps_rows,
    dm_rows,
    mcs_rows,
    pinball_rows,
    relative_rows,
)

PERIOD_TITLES = {
    "all": "All months",
    "ex_covid": f"Excluding COVID months ({evaluate.COVID_START} to {evaluate.COVID_END})",
}

CSS = """
:root { --ink:#1f2328; --muted:#59636e; --rule:#d8dee4; --head:#f3f5f7;
        --good:#dff3e4; --good-ink:#14532d; --bad:#fde2e1; --bad-ink:#7f1d1d; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--ink); background: #fafbfc; }
header { background: #0b3d61; color: white; padding: 20px 32px; }
header h1 { margin: 0 0 6px; font-size: 22px; }
header p { margin: 0; opacity: .85; }
main { max-width: 1320px; margin: 0 auto; padding: 8px 32px 48px; }
section { background: white; border: 1px solid var(--rule); border-radius: 8px;
          padding: 12px 20px 16px; margin: 18px 0; }
h2 { font-size: 18px; margin: 6px 0 8px; }
h3 { font-size: 15px; margin: 14px 0 6px; color: var(--muted); }
p.note { color: var(--muted); margin: 4px 0 10px; font-size: 13px; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 6px 0; }
dl.summary dt { color: var(--muted); }
dl.summary dd { margin: 0; font-weight: 600; }
.pair { display: flex; flex-wrap: wrap; gap: 14px 28px; }
.pair > div { flex: 0 1 auto; min-width: 0; max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--rule); text-align: right; white-space: nowrap; }
th { background: var(--head); font-weight: 600; }
td.key, th.key { text-align: left; }
td.good { background: var(--good); color: var(--good-ink); font-weight: 600; }
td.bad { background: var(--bad); color: var(--bad-ink); }
td.weak-good { background: #f2faf4; color: var(--good-ink); font-style: italic; }
td.weak-bad { background: #fef4f3; color: var(--bad-ink); font-style: italic; }
tr.first td { border-top: 2px solid #aab4be; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); border-radius: 4px;
             background: white; }
figcaption { color: var(--muted); font-size: 13px; }
/* one fan chart per row, at its own size: its text is sized for 100% */
.fans { display: block; }
details summary { cursor: pointer; color: #0b5cad; margin: 6px 0; }
code { background: var(--head); padding: 0 4px; border-radius: 3px; }
"""


@dataclass(frozen=True)
class ReportImage:
    """A chart on the page: `src` relative to the HTML file, `group` "metrics" or "h{n}"."""

    src: str
    caption: str
    group: str = "metrics"


def _table(header: Sequence[str], rows: Sequence[Sequence[Cell]], n_keys: int) -> str:
    """HTML table; the first `n_keys` columns are row labels; a new first key starts a band."""
    head = "".join(
        f'<th class="{"key" if i < n_keys else ""}">{html.escape(h)}</th>'
        for i, h in enumerate(header)
    )
    body, previous = [], None
    for row in rows:
        new_block = n_keys > 1 and previous is not None and row[0].text != previous
        band = ' class="first"' if new_block else ""
        previous = row[0].text
        cells = "".join(
            f'<td class="{"key" if i < n_keys else cell.css}">{html.escape(cell.text)}</td>'
            for i, cell in enumerate(row)
        )
        body.append(f"<tr{band}>{cells}</tr>")
    if not rows:
        return '<p class="note">No rows.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(
    name: str,
    title: str,
    note: str,
    tables: Sequence[pd.DataFrame],
    build: Callable[..., Rows],
    *,
    n_keys: int = 2,
    collapsed: bool = False,
) -> str:
    """A section with the table of each period side by side (`note` is trusted HTML)."""
    parts = []
    for period, period_title in PERIOD_TITLES.items():
        frames = [t.loc[t["PERIOD"] == period].drop(columns="PERIOD") for t in tables]
        header, rows = build(*frames)
        table = _table(header, rows, n_keys)
        parts.append(f"<div><h3>{html.escape(period_title)}</h3>{table}</div>")
    pair = f'<div class="pair">{"".join(parts)}</div>'
    if collapsed:
        pair = f"<details><summary>Show the tables</summary>{pair}</details>"
    return f'<section id="{name}"><h2>{html.escape(title)}</h2><p class="note">{note}</p>{pair}</section>'


def _group_title(group: str) -> str:
    """Group "h3" -> "3 months ahead"; other group names as given."""
    if re.fullmatch(r"h\d+", group):
        n = int(group[1:])
        return f"{n} month{'s' if n != 1 else ''} ahead"
    return group


def _group_order(group: str) -> tuple[int, int, str]:
    """Horizon groups by horizon ("h2" before "h12"), then any others by name."""
    return (0, int(group[1:]), "") if re.fullmatch(r"h\d+", group) else (1, 0, group)


def _figure(image: ReportImage) -> str:
    src, caption = html.escape(image.src, quote=True), html.escape(image.caption)
    return f'<figure><img src="{src}" alt="{caption}" loading="eager"><figcaption>{caption}</figcaption></figure>'


def _holm_note(bench: str, has_mcs: bool) -> str:
    """The DM caption's part on many comparisons and what the colours mean (trusted HTML)."""
    joint = (' Which models nothing beats, all compared at once: the <a href="#mcs">Model '
             "Confidence Set</a>." if has_mcs else "")  # fmt: skip
    return (
        f"<i>Holm p</i> adjusts the p-value for the number of tests (Holm's method; the family "
        f"is every model × horizon against {bench} in the period), so the chance that any "
        f"green or red cell is a false alarm is at most {DM_LEVEL:g}. Green: better than the "
        f"benchmark at {DM_LEVEL:g} after the adjustment; red: worse. Pale italic: below "
        f"{DM_LEVEL:g} before the adjustment only, as some of many tests are by chance alone."
        + joint
    )


def _tests_holm_note() -> str:
    """The coverage tests' caption on many tests and what the colours mean (trusted HTML)."""
    return (
        "<i>Holm p</i> adjusts each p-value for the number of cells its test has (Holm's "
        "method; the family: that test's every model × horizon × level in the period), so the "
        f"chance that any red cell of a test is a false alarm of a correct forecast is at most "
        f"{TEST_LEVEL:g}. Red: p &lt; {TEST_LEVEL:g} after the adjustment. Pale italic: below "
        f"{TEST_LEVEL:g} before the adjustment only, as some of many tests are by chance alone."
    )


# the metric tables the page shows: all of evaluate.metric_tables' but DM by quantile level
REPORT_TABLES = tuple(name for name in evaluate.METRIC_TABLES if name != "dm_by_quantile")


def render_report(
    tables: Mapping[str, pd.DataFrame],
    images: Sequence[ReportImage],
    *,
    title: str,
    summary: Mapping[str, object],
    missing: pd.DataFrame | None = None,
    benchmark: str = evaluate.BENCHMARK,
    fan_note: str = "",
) -> str:
    """The report page as a string. `tables` is `evaluate.metric_tables(...)` output;
    `fan_note` (plain text) says which countries have fan charts and why."""
    absent = [name for name in REPORT_TABLES if name not in tables]
    if absent:
        raise ValueError(f"tables must hold the evaluate.metric_tables entries; lacks {absent}")
    esc = html.escape
    bench = f"<code>{esc(benchmark)}</code>"
    items = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>" for k, v in summary.items())
    metric_figs = "".join(_figure(i) for i in images if i.group == "metrics")
    fan_groups: dict[str, list[ReportImage]] = {}
    for image in images:
        if image.group != "metrics":
            fan_groups.setdefault(image.group, []).append(image)
    fans = "".join(
        f'<h3>{esc(_group_title(group))}</h3><div class="fans">{"".join(_figure(i) for i in group_images)}</div>'
        for group, group_images in sorted(fan_groups.items(), key=lambda kv: _group_order(kv[0]))
    )
    t = tables
    has_mcs = "coverage_tests" in t and "mcs" in t  # the MCS section below is drawn
    sections = [
        _section("pinball", "Mean pinball loss",
                 "Mean check loss per model, horizon and quantile level over scored forecasts "
                 "(actual known); <i>mean</i> pools the levels. Lower is better.",
                 [t["pinball"]], pinball_rows),
        _section("relative", f"Pinball loss relative to {benchmark}",
                 f"Ratio of mean pinball loss to {bench} on the forecasts both scored (same "
                 "country, horizon, level and origin). Green: better than the benchmark by more "
                 "than 1%; red: worse by more than 1%.",
                 [t["relative_pinball"]], relative_rows),
        _section("coverage", "Coverage",
                 "Share of actuals at or below each quantile forecast (nominal = the level), and "
                 "of the central interval from the lowest to the highest level, with its mean "
                 f"width. Red: off the nominal level by more than {COVERAGE_FLAG_SE:g} binomial "
                 "standard errors (a screen: serial correlation is ignored).",
                 [t["coverage"], t["interval"]], coverage_rows),
        _section("crps", "CRPS and quantile crossing",
                 "CRPS ≈ 2 × mean pinball loss over the forecast's quantile levels (equal-weight "
                 "quadrature of CRPS = 2∫ρ<sub>τ</sub>dτ; crude with few levels). Crossing rate: "
                 "share of forecasts whose quantiles are not non-decreasing.",
                 [t["crps"], t["crossing"]], crps_rows),
        _section("dm", f"Diebold-Mariano tests against {benchmark}",
                 f"Loss differential d = pinball(model) − pinball({bench}) on common forecasts, "
                 "averaged over quantile levels and countries per forecast month; HAC variance "
                 "with Bartlett weights and h−1 lags, Harvey-Leybourne-Newbold correction, "
                 "two-sided t p-value. " + _holm_note(bench, has_mcs),
                 [t["dm"]], dm_rows),
    ]  # fmt: skip
    if has_mcs:
        sections += [
            _section("coverage_tests", "Coverage tests",
                     "Per model, horizon and level, pooled over countries (per country in "
                     "<code>reports/tables/coverage_tests_by_country.parquet</code>): Kupiec's "
                     "unconditional coverage (UC), Christoffersen's independence (IND) and "
                     "conditional coverage (CC), Engle-Manganelli's dynamic quantile test (DQ: "
                     "constant, 4 lagged hits, the forecast). " + _tests_holm_note() + " "
                     + html.escape(SERIAL_DEPENDENCE_NOTE),
                     [with_holm(t["coverage_tests"])], coverage_test_rows, n_keys=3,
                     collapsed=True),
            _section("mcs", "Model Confidence Set",
                     "arch's MCS (range statistic, stationary bootstrap) per horizon on per-origin "
                     "mean pinball losses over the origins every model scored; green: in the set.",
                     [t["mcs"]], mcs_rows, n_keys=1),
        ]  # fmt: skip
    if "pinball_decomposition" in t:  # period "all" only
        header, cells = decomposition_cells(t["pinball_decomposition"])
        table = _table(header, [[Cell(c) for c in row] for row in cells], n_keys=3)
        sections.append(f'<section id="decomposition"><h2>Pinball loss decomposition</h2><p class="note">{esc(DECOMPOSITION_NOTE)}</p><details><summary>Show the table</summary><div class="pair"><div><h3>{PERIOD_TITLES["all"]}</h3>{table}</div></div></details></section>')  # fmt: skip
    country = _section("country", "Mean pinball loss by country",
                       "Pooled over horizons and quantile levels; green marks the best model "
                       "of the country.",
                       [t["pinball_by_country"]], country_rows, n_keys=1, collapsed=True)  # fmt: skip
    if missing is None or missing.empty:
        missing_html = "<p>None: every expected fit has forecasts.</p>"
    else:
        shown = missing.head(50)
        rows = [
            [Cell(str(v)) for v in record] for record in shown.astype(str).itertuples(index=False)
        ]
        more = f"<p class='note'>First 50 of {len(missing)}; all are in <code>forecasts/missing.parquet</code>.</p>" if len(missing) > 50 else ""  # fmt: skip
        missing_html = f"<p><b>{len(missing)}</b> expected forecasts are missing.</p>{more}{_table(list(shown.columns), rows, 1)}"  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><p>Out-of-sample quantile forecast evaluation; benchmark {esc(benchmark)}.</p></header>
<main>
<section id="summary"><h2>Run</h2><dl class="summary">{items}</dl></section>
<section id="charts"><h2>Charts</h2>{metric_figs}</section>
{"".join(sections)}
<section id="fans"><h2>Fan charts</h2><p class="note">The actual series (black) against each model's quantile forecasts (in the model's colour; a calibrated variant dashed, right of its model), one horizon at a time; hatched: COVID months.{" " + esc(fan_note) if fan_note else ""}</p>{fans or "<p>No fan charts.</p>"}</section>
{country}
<section id="missing"><h2>Missing forecasts</h2>{missing_html}</section>
</main>
</body>
</html>
"""
