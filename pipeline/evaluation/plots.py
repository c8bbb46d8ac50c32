"""Fan charts and metric charts of a forecast table (matplotlib, Agg, deterministic PNGs).

Figures are built with the object API (`matplotlib.figure.Figure` on an Agg canvas; no pyplot,
so no global backend switch and no figure registry to leak), under the fixed style of
`plot_style` (which also encodes them: `png_bytes`), so the same table gives byte-identical
PNGs. Each model keeps one colour in every chart (`plot_style.model_colors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation.calibration import CAL_SUFFIX
from pipeline.evaluation.grouping import Keys, group_mean
from pipeline.evaluation.plot_style import (  # noqa: F401  (DPI, PALETTE, ...: the charts' API)
    ACTUAL_COLOR,
    COVID_COLOR,
    COVID_HATCH,
    DPI,
    NEUTRAL,
    NOMINAL_COLOR,
    PALETTE,
    STYLE,
    SharedCanvas,
    base_model,
    label,
    line_style,
    model_colors,
    ordered,
    png_bytes,
    save_figure,
)


def _covid_span(ax, times: pd.Index) -> None:
    """Hatch the COVID months inside the plotted range (hatched, so no band is mistaken for it)."""
    lo = max(pd.Timestamp(evaluate.COVID_START), times.min())
    hi = min(pd.Timestamp(evaluate.COVID_END) + pd.offsets.MonthBegin(1), times.max())
    if lo < hi:
        ax.axvspan(lo, hi, facecolor=COVID_COLOR, edgecolor=COVID_HATCH, hatch="///", lw=0,
                   zorder=0, label="COVID months")  # fmt: skip


def _fan_layout(names: list[str], order: Sequence[str]) -> list[list[str | None]]:
    """Rows of panels: one row per base model, its raw forecasts left and `_cal` right when the
    chart has calibrated variants; else the models two by two (one column up to three)."""
    if any(n.endswith(CAL_SUFFIX) for n in names):
        bases = list(dict.fromkeys(base_model(n) for n in names))
        return [[b if b in names else None, f"{b}{CAL_SUFFIX}" if f"{b}{CAL_SUFFIX}" in names
                 else None] for b in bases]  # fmt: skip
    if len(names) <= 3:
        return [[n] for n in names]
    return [[*names[i : i + 2], *([None] * (i + 2 - len(names)))] for i in range(0, len(names), 2)]


def fan_chart(
    frame: pd.DataFrame,
    country: str,
    horizon: int,
    *,
    models: Sequence[str] | None = None,
    benchmark: str | None = evaluate.BENCHMARK,
    order: Sequence[str] = (),
    palette: Sequence[str] | None = None,
) -> Figure:
    """One panel per model: the actual series (black) against the model's quantile fan for
    `country` at `horizon` (bands between symmetric quantile pairs, line at the median level);
    a `_cal` variant sits right of its raw model. `order` fixes the colours (`model_colors`) of
    `palette`'s models (default: the frame's, found over every row)."""
    rows = frame.loc[(frame["COUNTRY"] == country) & (frame["HORIZON"] == horizon)]
    if rows.empty:
        raise ValueError(
            f"country/horizon must have forecasts in frame; got country={country!r}, horizon={horizon!r}"
        )
    if models is None:  # the benchmark first: it is the reference the others are read against
        bench = [benchmark] if benchmark is not None else []
        models = ordered(rows["MODEL"].unique().tolist(), [*bench, *order])
    names = list(models)
    palette = frame["MODEL"].unique().tolist() if palette is None else palette
    colors = model_colors(palette, order)
    actual = rows.dropna(subset=["ACTUAL"]).groupby("TIME")["ACTUAL"].first().sort_index()
    target = ", ".join(sorted(rows["TARGET"].dropna().unique().tolist())) or "value"
    layout = _fan_layout(names, order)
    n_rows, n_cols = len(layout), len(layout[0])
    with matplotlib.rc_context(STYLE):
        # fixed margins (in inches) instead of constrained layout: half the render time, and
        # fan charts are the bulk of the PNGs; the top holds the title and the legend
        panel, gap, top, bottom = 2.0, 0.5, 1.05, 0.62
        height = top + bottom + n_rows * panel + (n_rows - 1) * gap
        width = 10.0 if n_cols == 1 else 12.0
        fig = Figure(figsize=(width, height))
        grid = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)
        fig.subplots_adjust(left=0.72 / width, right=1 - 0.15 / width, top=1 - top / height,
                            bottom=bottom / height, hspace=gap / panel, wspace=0.75 / (width / n_cols))  # fmt: skip
        levels: list[float] = []
        for row, axes in zip(layout, grid, strict=True):
            for name, ax in zip(row, axes, strict=True):
                if name is None:
                    ax.set_axis_off()
                    continue
                part = rows.loc[rows["MODEL"] == name]
                levels = _fan_panel(ax, part, actual, colors[name], line_style(name)) or levels
                ax.set_title(label(name, benchmark), loc="left", color=colors[name])
                ax.set_ylabel(target)
                ax.yaxis.set_tick_params(labelleft=True)  # sharey hides them right of column 1
        for j in range(n_cols):  # the lowest panel of each column shows the dates
            shown = [i for i, row in enumerate(layout) if row[j] is not None]
            if not shown:
                continue
            ax = grid[shown[-1]][j]
            ax.set_xlabel("month forecast (origin + horizon)")
            ax.xaxis.set_tick_params(labelbottom=True)
        locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
        grid[0][0].xaxis.set_major_locator(locator)
        grid[0][0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        pad = pd.Timedelta(days=20)
        grid[0][0].set_xlim(rows["TIME"].min() - pad, rows["TIME"].max() + pad)
        fig.suptitle(f"{country}: {horizon}-month-ahead quantile forecasts vs actual",
                     fontsize=12, y=1 - 0.12 / height, va="top")  # fmt: skip
        fig.legend(handles=_fan_legend(levels), loc="upper center", ncols=6,
                   bbox_to_anchor=(0.5, 1 - 0.45 / height), borderaxespad=0)  # fmt: skip
    return fig


def _fan_legend(levels: Sequence[float]) -> list:
    """Legend keys shared by every panel, in neutral grey (each panel's colour is its model's)."""
    handles: list = []
    pairs = [(i, len(levels) - 1 - i) for i in range(len(levels) // 2)]
    for depth, (lo, hi) in enumerate(pairs):
        handles.append(Patch(color=NEUTRAL, alpha=0.18 + 0.14 * depth, lw=0,
                             label=f"{levels[lo]:.0%}–{levels[hi]:.0%} band"))  # fmt: skip
    if levels:
        mid = levels[int(np.argmin(np.abs(np.asarray(levels) - 0.5)))]
        handles.append(Line2D([], [], color=NEUTRAL, lw=1.8, label=f"q{mid:g} forecast"))
    handles.append(Line2D([], [], color=ACTUAL_COLOR, lw=1.6, marker="o", ms=3.5,
                          mfc="white", mew=1.2, label="actual"))  # fmt: skip
    handles.append(Patch(facecolor=COVID_COLOR, edgecolor=COVID_HATCH, hatch="///", lw=0,
                         label="COVID months"))  # fmt: skip
    return handles


def _fan_panel(ax, rows: pd.DataFrame, actual: pd.Series, color: str, style: str) -> list[float]:
    # one forecast per (TIME, QUANTILE) of a model, country and horizon: `pivot`, not
    # `pivot_table` (a quarter of the cost); without what pivot_table's dropna would drop
    grid = rows.pivot(index="TIME", columns="QUANTILE", values="FORECAST")
    missing = np.isnan(grid.to_numpy(np.float64))
    if missing.any():
        grid = grid.loc[~missing.all(axis=1), ~missing.all(axis=0)]
    grid = grid.sort_index().sort_index(axis=1)
    levels = grid.columns.to_numpy(np.float64)
    times = grid.index
    _covid_span(ax, times)
    # nested bands: outermost pair lightest, so inner (likelier) ranges read darker
    pairs = [(i, len(levels) - 1 - i) for i in range(len(levels) // 2)]
    for depth, (lo, hi) in enumerate(pairs):
        label = f"{levels[lo]:.0%}–{levels[hi]:.0%} band"
        ax.fill_between(times, grid.iloc[:, lo], grid.iloc[:, hi], color=color,
                        alpha=0.18 + 0.14 * depth, lw=0, label=label)  # fmt: skip
    mid = int(np.argmin(np.abs(levels - 0.5)))
    ax.plot(times, grid.iloc[:, mid], color=color, lw=1.8, ls=style, label=f"q{levels[mid]:g} forecast")  # fmt: skip
    # the actual on top in black, white-haloed with hollow markers: never read as a median.
    # The halo is a white line under it, not a path effect: a path effect draws each marker
    # as its own path (a tenth of a fan chart's render time); Agg stamps a line's markers.
    shown = actual.loc[(actual.index >= times.min()) & (actual.index <= times.max())]
    x, y = shown.index, shown.to_numpy()
    ax.plot(x, y, color="white", lw=3.2, marker="o", ms=3.5, mfc="white", mec="white",
            mew=3.2, zorder=4.9, label="_actual halo")  # fmt: skip
    ax.plot(x, y, color=ACTUAL_COLOR, lw=1.6, marker="o", ms=3.5, mfc="white", mew=1.2,
            zorder=5, label="actual")  # fmt: skip
    ax.set_title(_panel_summary(grid, actual), loc="right", fontsize=8, fontweight="normal",
                 color="#333333")  # fmt: skip
    return levels.tolist()


def _panel_summary(grid: pd.DataFrame, actual: pd.Series) -> str:
    """Central-interval coverage and mean pinball of the panel's scored forecasts, one line.

    Same definitions as `pipeline.evaluation.metrics`, on the (TIME x QUANTILE) grid of one model,
    country and horizon (numpy here: the pandas path costs more than drawing the panel)."""
    y = actual.reindex(grid.index).to_numpy(np.float64)
    pred = grid.to_numpy(np.float64)
    levels = grid.columns.to_numpy(np.float64)
    ok = np.isfinite(y) & np.isfinite(pred).all(axis=1)
    if not ok.any() or len(levels) < 2:
        return ""
    y, pred = y[ok], pred[ok]
    u = y[:, None] - pred
    loss = float(np.maximum(levels * u, (levels - 1.0) * u).mean())
    inside = float(((pred[:, 0] <= y) & (y <= pred[:, -1])).mean())
    return (
        f"{levels[0]:.0%}–{levels[-1]:.0%} coverage {inside:.0%} "
        f"(nominal {levels[-1] - levels[0]:.0%}) · pinball {loss:.3g}"
    )


# Margins of the two-panel metric charts, in inches: fixed instead of constrained layout (which
# measures every tick label twice: half of such a chart's render time). Left and between the
# panels: tick labels and the y label; top: the title and the panel titles.
_TWO = {"left": 0.7, "right": 0.2, "top": 0.72, "bottom": 0.55, "gap": 0.85}


def _two_periods(title: str, width: float = 12.0, height: float = 4.4):
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, 2, sharey=True)
    m = _TWO
    fig.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width,
                        top=1 - m["top"] / height, bottom=m["bottom"] / height)  # fmt: skip
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / height, va="top")
    covid = f"excluding COVID months ({evaluate.COVID_START} to {evaluate.COVID_END})"
    return (
        fig,
        dict(zip(("all", "ex_covid"), axes, strict=True)),
        {"all": "all months", "ex_covid": covid},
    )


def _outside_legend(fig: Figure, ax) -> None:
    """The models' legend right of the panels: measured once, the panels narrowed to fit it."""
    handles, labels = ax.get_legend_handles_labels()
    width, height = fig.get_size_inches()
    m = _TWO
    right = m["right"]
    if handles:
        top = 1 - m["top"] / height
        legend = fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, top),
                            ncols=1 if len(labels) <= 16 else 2, borderaxespad=0)  # fmt: skip
        with SharedCanvas.lock:
            wide = legend.get_window_extent(SharedCanvas(fig).get_renderer()).width / fig.dpi
        right = m["right"] + wide + 0.15
        legend.set_bbox_to_anchor((1 - (wide + m["right"]) / width, top), fig.transFigure)
    # the two panels share what is left, with room between them for the right one's y labels
    inner = width - m["left"] - right
    fig.subplots_adjust(right=1 - right / width, wspace=m["gap"] / ((inner - m["gap"]) / 2))


def _period_means(frame: pd.DataFrame, by: tuple[str, str], name: str) -> dict[str, pd.DataFrame]:
    """`evaluate.pinball` (name PINBALL) or `evaluate.coverage` (COVERAGE) by `by` of both
    periods, all months and COVID months excluded, bit for bit: the same rows in the same
    order into pandas' grouped mean, but the groups numbered once over the whole frame and no
    row copied (exclude_covid, then the scored rows copied every column: ~80 % of these
    charts' time at 3M rows)."""
    evaluate.check_frame(frame)
    scored = (frame["ACTUAL"].notna() & frame["FORECAST"].notna()).to_numpy(dtype=bool)
    y = frame["ACTUAL"].to_numpy(np.float64)
    f = frame["FORECAST"].to_numpy(np.float64)
    if name == "PINBALL":  # elementwise: the same bits over all rows as over the scored ones
        value = evaluate.pinball_loss(y, f, frame["QUANTILE"].to_numpy(np.float64))
    else:
        value = (y <= f).astype(np.float64)
    groups = Keys(frame[list(by)]).groups(by)
    kept = np.ones(len(frame), dtype=bool) if groups.kept is None else groups.kept
    tables = {}
    for period, mask in (("all", scored), ("ex_covid", scored & ~evaluate.covid_mask(frame))):
        if not (mask & kept).any():  # pandas' own empty table (its dtypes)
            rows = frame.loc[mask, list(by)]
            tables[period] = group_mean(rows, by, {name: value[mask]})
            continue
        ids = groups.ids[mask[kept]]  # group numbers of the whole frame: some may be absent
        n = np.bincount(ids, minlength=groups.n_groups)
        key = pd.Categorical.from_codes(ids, categories=pd.RangeIndex(groups.n_groups))
        means = pd.Series(value[mask & kept]).groupby(key, sort=True, observed=True).mean()
        present = np.flatnonzero(n)
        table = frame[list(by)].iloc[groups.first[present]].reset_index(drop=True)
        table["N"] = n[present].astype(np.int64)
        table[name] = means.to_numpy()
        tables[period] = table
    return tables


def pinball_chart(
    frame: pd.DataFrame, *, benchmark: str | None = evaluate.BENCHMARK, order: Sequence[str] = ()
) -> Figure:
    """Mean pinball loss (over quantiles and countries) by horizon, one line per model; all
    months vs COVID months excluded. `order` fixes the colours (`model_colors`)."""
    colors = model_colors(frame["MODEL"].unique().tolist(), order)
    with matplotlib.rc_context(STYLE):
        fig, axes, titles = _two_periods("Mean pinball loss by horizon (lower is better)")
        horizons = sorted(frame["HORIZON"].unique().tolist())
        for period, table in _period_means(frame, ("MODEL", "HORIZON"), "PINBALL").items():
            ax = axes[period]
            for name in ordered(table["MODEL"].unique().tolist(), order):
                rows = table.loc[table["MODEL"] == name]
                ax.plot(rows["HORIZON"], rows["PINBALL"], marker="o", ms=4.5,
                        lw=2.4 if name == benchmark else 1.6, ls=line_style(name),
                        color=colors[name], label=label(name, benchmark))  # fmt: skip
            ax.set_title(titles[period], loc="left")
            ax.set_xlabel("horizon (months)")
            ax.set_ylabel("mean pinball loss")
            ax.yaxis.set_tick_params(labelleft=True)
            ax.set_xticks(horizons if len(horizons) <= 12 else horizons[:: len(horizons) // 12 + 1])
            if table.empty:
                ax.text(0.5, 0.5, "no scored forecasts", transform=ax.transAxes, ha="center")
        _outside_legend(fig, axes["all"])
    return fig


def coverage_chart(
    frame: pd.DataFrame, *, benchmark: str | None = evaluate.BENCHMARK, order: Sequence[str] = ()
) -> Figure:
    """Empirical coverage (share of actuals at or below the forecast) against the nominal
    quantile level, pooled over horizons and countries; the diagonal is perfect calibration."""
    colors = model_colors(frame["MODEL"].unique().tolist(), order)
    with matplotlib.rc_context(STYLE):
        fig, axes, titles = _two_periods("Coverage by quantile level (closer to the diagonal is better)")  # fmt: skip
        levels = sorted(frame["QUANTILE"].unique().tolist())
        for period, table in _period_means(frame, ("MODEL", "QUANTILE"), "COVERAGE").items():
            ax = axes[period]
            ax.plot([0, 1], [0, 1], color=NOMINAL_COLOR, lw=1.0, ls=":", label="nominal")
            for name in ordered(table["MODEL"].unique().tolist(), order):
                rows = table.loc[table["MODEL"] == name]
                ax.plot(rows["QUANTILE"], rows["COVERAGE"], marker="o", ms=4.5,
                        lw=2.4 if name == benchmark else 1.5, ls=line_style(name),
                        color=colors[name], label=label(name, benchmark))  # fmt: skip
            ax.set_xticks(levels, [f"{q:g}" for q in levels])
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(titles[period], loc="left")
            ax.set_xlabel("nominal quantile level")
            ax.set_ylabel("share of actuals ≤ forecast")
            ax.yaxis.set_tick_params(labelleft=True)
        _outside_legend(fig, axes["all"])
    return fig


def reliability_chart(
    frame: pd.DataFrame, *, suffix: str = CAL_SUFFIX, order: Sequence[str] = ()
) -> Figure:
    """Reliability diagram, raw against calibrated: observed hit rate (share of actuals at or
    below the forecast, pooled over countries and horizons) against the nominal level, one
    panel per model that has a `<model>{suffix}` variant (solid raw, dashed calibrated, both in
    the model's colour)."""
    present = set(frame["MODEL"].unique().tolist())
    bases = [m for m in ordered(present, order) if not m.endswith(suffix) and f"{m}{suffix}" in present]  # fmt: skip
    table = evaluate.coverage(frame, by=("MODEL", "QUANTILE"))
    colors = model_colors(present, order)
    n = max(len(bases), 1)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.3 * cols, 3.2 * rows + 0.9), layout="constrained")
        fig.suptitle("Reliability: observed hit rate vs nominal level, raw against calibrated")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(bases) :]:
            ax.set_axis_off()
        if not bases:
            axes[0].set_axis_on()
            axes[0].text(0.5, 0.5, "no calibrated variants", transform=axes[0].transAxes,
                         ha="center")  # fmt: skip
        for ax, base in zip(axes, bases, strict=False):
            ax.plot([0, 1], [0, 1], color=NOMINAL_COLOR, lw=1.0, ls=":", label="nominal")
            for name in (base, f"{base}{suffix}"):
                part = table.loc[table["MODEL"] == name]
                ax.plot(part["QUANTILE"], part["COVERAGE"], marker="o", ms=4, lw=1.6,
                        ls=line_style(name), color=colors[name], label=name)  # fmt: skip
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(base, loc="left", color=colors[base])
            ax.set_xlabel("nominal quantile level")
            ax.set_ylabel("observed hit rate")
        keys = [Line2D([], [], color=NEUTRAL, lw=1.6, marker="o", ms=4, label="raw"),
                Line2D([], [], color=NEUTRAL, lw=1.6, ls="--", marker="o", ms=4,
                       label=f"calibrated ({suffix})"),
                Line2D([], [], color=NOMINAL_COLOR, lw=1.0, ls=":", label="nominal (perfect)")]  # fmt: skip
        fig.legend(handles=keys, loc="outside lower center", ncols=3)
    return fig
