"""Charts draw the evaluated numbers, PNGs are byte-stable, and the report renders its images in
a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation import plots
from pipeline.evaluation.report import ReportImage, render_report
from pipeline.schema import conform_forecasts

LEVELS = (0.1, 0.5, 0.9)
ORIGINS = pd.date_range("2019-06", periods=30, freq="MS")  # spans the COVID window


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    months = pd.date_range("2019-01", "2022-06", freq="MS")
    rows = []
    for country in ("AT", "BE"):
        y = pd.Series(2 + np.cumsum(rng.normal(0, 0.4, months.size)), index=months)
        for model, spread in (("ar_qr", 0.5), ("lqr", 0.7)):
            for h in (1, 3):
                times = ORIGINS + pd.DateOffset(months=h)
                centre = y.loc[times].to_numpy() + rng.normal(0, 0.4, ORIGINS.size)
                for q, z in zip(LEVELS, (-1.28, 0.0, 1.28), strict=True):
                    rows.append(pd.DataFrame({
                        "TIME": times, "COUNTRY": country, "TARGET": "infl", "MODEL": model,
                        "QUANTILE": q, "HORIZON": h, "WINDOW_START": ORIGINS - pd.DateOffset(months=35),
                        "WINDOW_END": ORIGINS, "FORECAST": centre + z * spread,
                        "ACTUAL": np.where(times < pd.Timestamp("2021-10"), y.loc[times], np.nan),
                    }))  # fmt: skip
    return conform_forecasts(pd.concat(rows, ignore_index=True))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert (
            zlib.crc32(kind + body)
            == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        )
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def _png_size(path: Path) -> tuple[int, int]:
    kind, body = _png_chunks(path.read_bytes())[0]
    assert kind == b"IHDR"
    return struct.unpack(">II", body[:8])


def _line(ax, label: str):
    lines = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(lines) == 1, [line.get_label() for line in ax.get_lines()]
    return lines[0]


def test_fan_chart_draws_actuals_and_median_of_each_model(frame):
    fig = plots.fan_chart(frame, "AT", 3)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["ar_qr (benchmark)", "lqr"]  # the benchmark first
    rows = frame[(frame["COUNTRY"] == "AT") & (frame["HORIZON"] == 3)]
    actual = rows.dropna(subset=["ACTUAL"]).groupby("TIME")["ACTUAL"].first()
    for ax, model in zip(fig.axes, ["ar_qr", "lqr"], strict=True):
        np.testing.assert_allclose(_line(ax, "actual").get_ydata(), actual.to_numpy())
        median = rows[(rows["MODEL"] == model) & (rows["QUANTILE"] == 0.5)].sort_values("TIME")
        np.testing.assert_allclose(_line(ax, "q0.5 forecast").get_ydata(), median["FORECAST"])
        assert len(ax.collections) >= 1  # the 10-90 band
    with pytest.raises(ValueError, match="country"):
        plots.fan_chart(frame, "XX", 3)


def test_metric_charts_plot_the_evaluated_numbers(frame):
    fig = plots.pinball_chart(frame)
    for ax, part in zip(fig.axes, (frame, evaluate.exclude_covid(frame)), strict=True):
        table = evaluate.pinball(part, by=("MODEL", "HORIZON"))
        for model, label in (("ar_qr", "ar_qr (benchmark)"), ("lqr", "lqr")):
            expected = table.loc[table["MODEL"] == model, "PINBALL"].to_numpy()
            np.testing.assert_allclose(_line(ax, label).get_ydata(), expected)
    fig = plots.coverage_chart(frame)
    table = evaluate.coverage(evaluate.exclude_covid(frame), by=("MODEL", "QUANTILE"))
    np.testing.assert_allclose(
        _line(fig.axes[1], "lqr").get_ydata(), table.loc[table["MODEL"] == "lqr", "COVERAGE"]
    )
    np.testing.assert_allclose(_line(fig.axes[0], "nominal").get_ydata(), [0, 1])


def _cases(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    covid = evaluate.covid_mask(frame)
    odd = frame.copy()
    odd.loc[odd.index % 7 == 0, "FORECAST"] = np.nan  # unscored rows
    odd.loc[odd.index % 11 == 0, "MODEL"] = pd.NA  # rows groupby drops
    odd.loc[covid & (odd["HORIZON"] == 3).to_numpy(), "ACTUAL"] = np.nan  # h3: no COVID rows
    only = frame.loc[~covid & (frame["MODEL"] == "lqr").to_numpy()]  # lqr outside COVID only
    return {
        "plain": frame,
        "compact": evaluate.compact_frame(frame),
        "odd": odd,
        "a group only in one period": pd.concat([frame.loc[covid], only], ignore_index=True),
        "COVID months only: an empty period": frame.loc[covid].iloc[::-1],
        "nothing scored": frame.assign(ACTUAL=np.nan),
    }


@pytest.mark.parametrize("case", [
    "plain", "compact", "odd", "a group only in one period",
    "COVID months only: an empty period", "nothing scored"])  # fmt: skip
def test_metric_charts_numbers_are_the_metric_tables_bit_for_bit(frame, case):
    # the charts' own grouped means (no copy of the rows) against evaluate's, both periods
    rows = _cases(frame)[case]
    periods = {"all": rows, "ex_covid": evaluate.exclude_covid(rows)}
    for by, name, metric in (
        (("MODEL", "HORIZON"), "PINBALL", evaluate.pinball),
        (("MODEL", "QUANTILE"), "COVERAGE", evaluate.coverage),
    ):
        got = plots._period_means(rows, by, name)
        assert list(got) == list(periods)
        for period, part in periods.items():
            pd.testing.assert_frame_equal(got[period], metric(part, by=by), check_exact=True)


def test_pngs_are_byte_stable_sized_and_free_of_metadata(frame, tmp_path):
    a = plots.save_figure(plots.fan_chart(frame, "BE", 1), tmp_path / "a.png")
    b = plots.save_figure(plots.fan_chart(frame, "BE", 1), tmp_path / "b.png")
    c = plots.save_figure(plots.fan_chart(frame, "BE", 3), tmp_path / "c.png")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    kinds = [kind for kind, _ in _png_chunks(a.read_bytes())]
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(kinds)  # no Software, no timestamp
    # two panels stacked: 1.05 in title and legend, 0.62 in axis, 2 x 2.0 in panels, 0.5 in gap
    assert _png_size(a) == (10 * plots.DPI, round((1.05 + 0.62 + 2 * 2.0 + 0.5) * plots.DPI))
    assert list(tmp_path.iterdir()) and not list(tmp_path.glob(".*.tmp"))  # atomic, no leftovers


def test_charts_drawn_on_threads_or_after_others_keep_their_bytes(frame):
    """Figures of one size share a renderer (and its text metrics): the bytes of a chart do
    not depend on what was drawn before it or beside it."""
    from concurrent.futures import ThreadPoolExecutor

    def figures() -> list:
        return [plots.fan_chart(frame, "BE", 1), plots.pinball_chart(frame),
                plots.fan_chart(frame, "AT", 3), plots.fan_chart(frame, "BE", 1)]  # fmt: skip

    one_by_one = [plots.png_bytes(fig) for fig in figures()]
    assert one_by_one[0] == one_by_one[3] != one_by_one[2]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(plots.png_bytes, figures())) == one_by_one


ORDER = ("ar_qr", "lqr", "ensemble_nn", "rw", "climatology", "combo")


@pytest.fixture(scope="module")
def calibrated(frame) -> pd.DataFrame:
    """The two models, a benchmark and combo, each with a `_cal` variant (shifted forecasts)."""
    parts = [frame]
    for source, name, shift in (("ar_qr", "rw", 0.3), ("lqr", "combo", -0.2)):
        parts.append(frame.loc[frame["MODEL"] == source].assign(MODEL=name, FORECAST=lambda f, s=shift: f["FORECAST"] + s))  # fmt: skip
    raw = pd.concat(parts, ignore_index=True)
    cal = raw.assign(MODEL=raw["MODEL"].astype(str) + "_cal", FORECAST=raw["FORECAST"] * 1.1)
    return conform_forecasts(pd.concat([raw, cal], ignore_index=True))


def _drawn_colors(fig) -> dict[str, tuple[str, str]]:
    """{model: (colour, line style)} read back from the artists: a metric chart's labelled
    lines, a fan chart's median line under each panel title."""
    from matplotlib.colors import to_hex

    out: dict[str, set[tuple[str, str]]] = {}
    for ax in fig.axes:
        title = ax.get_title(loc="left").removesuffix(" (benchmark)")
        for line in ax.get_lines():
            label = line.get_label().removesuffix(" (benchmark)")
            model = title if label.endswith(" forecast") else label
            if model and model not in ("actual", "nominal") and not model.startswith("_"):
                out.setdefault(model, set()).add((to_hex(line.get_color()), line.get_linestyle()))
    assert all(len(v) == 1 for v in out.values()), out  # one look per model within a chart
    return {m: next(iter(v)) for m, v in out.items()}


def test_a_model_has_one_colour_in_every_chart_and_its_cal_variant_is_dashed(calibrated):
    charts = {
        "pinball": plots.pinball_chart(calibrated, order=ORDER),
        "coverage": plots.coverage_chart(calibrated, order=ORDER),
        "reliability": plots.reliability_chart(calibrated, order=ORDER),
        "fan": plots.fan_chart(calibrated, "AT", 1, order=ORDER),
    }
    drawn = {kind: _drawn_colors(fig) for kind, fig in charts.items()}
    models = sorted(calibrated["MODEL"].unique().tolist())
    for kind, looks in drawn.items():
        assert sorted(looks) == models, kind
    reference = drawn["pinball"]
    for kind, looks in drawn.items():
        assert looks == reference, kind
    for model in models:
        color, style = reference[model]
        base = model.removesuffix("_cal")
        assert color == reference[base][0] and style == ("--" if model != base else "-")
    bases = {reference[m][0] for m in models if not m.endswith("_cal")}
    assert len(bases) == 4  # distinct models, distinct colours
    # the colour comes from the study's order: dropping a model recolours no other
    fewer = calibrated.loc[~calibrated["MODEL"].str.startswith("lqr")]
    assert _drawn_colors(plots.coverage_chart(fewer, order=ORDER)) == {
        m: look for m, look in reference.items() if not m.startswith("lqr")
    }
    # the fan chart pairs each model with its calibrated variant, side by side
    fan = charts["fan"]
    assert [ax.get_title(loc="left") for ax in fan.axes[:2]] == ["ar_qr (benchmark)", "ar_qr_cal"]


def test_a_fan_chart_colours_the_models_of_its_palette_not_of_its_rows(calibrated):
    # the stage passes the study's models (charts.plan_charts), so a fan chart drawn from
    # fewer rows keeps each model's colour without a pass over every row of the study
    study = sorted(calibrated["MODEL"].unique().tolist())
    whole = _drawn_colors(plots.fan_chart(calibrated, "AT", 1))
    part = calibrated.loc[~calibrated["MODEL"].str.startswith("ar_qr")]
    assert _drawn_colors(plots.fan_chart(part, "AT", 1, palette=study)) == {
        m: look for m, look in whole.items() if not m.startswith("ar_qr")
    }
    assert _drawn_colors(plots.fan_chart(part, "AT", 1)) != {
        m: look for m, look in whole.items() if not m.startswith("ar_qr")
    }


def _lab(color: str) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB colour."""
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(color))
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ rgb / np.array([0.95047, 1.0, 1.08883])  # fmt: skip
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_palette_holds_15_plus_distinguishable_colours_none_like_the_actual():
    labs = [_lab(c) for c in (*plots.PALETTE, plots.ACTUAL_COLOR)]
    n = len(plots.PALETTE)
    assert n >= 15 and len(set(plots.PALETTE)) == n
    closest = min(np.linalg.norm(labs[i] - labs[j]) for i in range(n + 1) for j in range(i))
    assert closest >= 18  # CIE76: about 2.3 is a just-noticeable difference
    names = [f"m{i:02d}" for i in range(n)]
    assert len(set(plots.model_colors(names, names).values())) == n


def test_legends_sit_outside_the_data_and_every_panel_is_labelled(calibrated):
    for fig in (
        plots.pinball_chart(calibrated, order=ORDER),
        plots.coverage_chart(calibrated, order=ORDER),
        plots.reliability_chart(calibrated, order=ORDER),
        plots.fan_chart(calibrated, "BE", 3, order=ORDER),
    ):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        assert len(fig.legends) == 1 and not [ax for ax in fig.axes if ax.get_legend()]
        legend = fig.legends[0].get_window_extent(renderer)
        title = fig._suptitle.get_window_extent(renderer)
        assert not legend.overlaps(title)
        inside = fig.bbox.padded(0.5)  # nothing cut off at the edges (fixed margins)
        assert inside.contains(legend.x0, legend.y0) and inside.contains(legend.x1, legend.y1)
        for ax in fig.axes:
            if not ax.axison:
                continue
            box = ax.get_tightbbox(renderer)
            assert not legend.overlaps(box)  # data, ticks, titles
            assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
            others = [o.get_tightbbox(renderer) for o in fig.axes if o is not ax and o.axison]
            assert not any(box.overlaps(o) for o in others), ax.get_title(loc="left")
            assert ax.get_xlabel() or ax not in _bottom_row(fig), ax
            assert ax.get_ylabel(), ax.get_title(loc="left")


def test_fan_chart_of_five_models_dates_the_lowest_panel_of_each_column(calibrated):
    raw = calibrated.loc[~calibrated["MODEL"].str.endswith("_cal")]
    fifth = raw.loc[raw["MODEL"] == "rw"].assign(MODEL="climatology")
    fig = plots.fan_chart(pd.concat([raw, fifth], ignore_index=True), "AT", 1, order=ORDER)
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 5 and len(fig.axes) == 6  # 3 rows x 2, the last slot empty
    dated = _bottom_row(fig)
    assert [ax.get_title(loc="left") for ax in dated] == ["climatology", "combo"]
    assert all(ax.get_xlabel() for ax in dated)


def _bottom_row(fig) -> list:
    """The axes with x tick labels showing (a shared x axis labels only the bottom row)."""
    return [ax for ax in fig.axes if ax.axison and ax.xaxis.get_tick_params()["labelbottom"]]


def _chromium_dom(page: Path, profile: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is required: apt-get install -y chromium"
    command = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


PROBE = """
<img id="control" src="no-such-chart.png" alt="negative control">
<script>
window.addEventListener("load", function () {
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: Array.from(document.images).map(function (i) {
      return [i.getAttribute("src"), i.complete, i.naturalWidth, i.naturalHeight];
    }),
    tables: document.querySelectorAll("table").length,
    title: document.title
  });
  document.body.appendChild(out);
});
</script>
"""


def test_report_renders_with_its_images_in_headless_chromium(frame, tmp_path):
    reports = tmp_path / "reports"
    images = [
        ReportImage("pinball_by_horizon.png", "Pinball by horizon"),
        ReportImage("coverage.png", "Coverage"),
        ReportImage("fan/AT_h1.png", "AT, 1 month ahead", "h1"),
        ReportImage("fan/BE_h3.png", "BE, 3 months ahead", "h3"),
    ]
    plots.save_figure(plots.pinball_chart(frame), reports / images[0].src)
    plots.save_figure(plots.coverage_chart(frame), reports / images[1].src)
    plots.save_figure(plots.fan_chart(frame, "AT", 1), reports / images[2].src)
    plots.save_figure(plots.fan_chart(frame, "BE", 3), reports / images[3].src)
    tables = evaluate.metric_tables(frame)
    html = render_report(tables, images, title="infl: evaluation", summary={"models": "ar_qr, lqr"})
    assert html == render_report(
        tables, images, title="infl: evaluation", summary={"models": "ar_qr, lqr"}
    )
    assert not re.search(r"https?://|<script|<link", html)  # self-contained, no network
    (reports / "index.html").write_text(html)
    # the probe is the report itself plus a script that records what the browser decoded
    (reports / "probe.html").write_text(html.replace("</body>", PROBE + "</body>"))

    dom = _chromium_dom(reports / "probe.html", tmp_path / "profile")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["title"] == "infl: evaluation"
    assert probe["tables"] >= 10  # five metric sections x two periods, plus by country
    decoded = {src: (done, w, h) for src, done, w, h in probe["images"]}
    assert decoded.pop("no-such-chart.png") == (True, 0, 0)  # the oracle sees a broken image
    assert set(decoded) == {image.src for image in images}
    for src, (done, width, height) in decoded.items():
        assert done and (width, height) == _png_size(reports / src), src


def test_render_report_needs_the_metric_tables(frame):
    tables = evaluate.metric_tables(frame)
    del tables["dm"]
    with pytest.raises(ValueError, match="tables"):
        render_report(tables, [], title="t", summary={})
