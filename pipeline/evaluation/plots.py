"""Fan charts and metric charts of a forecast table (matplotlib, Agg, deterministic PNGs).

Figures are built with the object API (`matplotlib.figure.Figure` on an Agg canvas; no pyplot,
so no global backend switch and no figure registry to leak), under a
fixed style, so the same table gives byte-identical PNGs (`save_figure` strips the metadata
that would carry a version or a timestamp).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.evaluation import metrics as evaluate
from pipeline.io import atomic_path

DPI = 100
# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in greyscale.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
ACTUAL_COLOR = "#222222"
COVID_COLOR = "#f2f2f2"
COVID_HATCH = "#d0d0d0"
STYLE = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs on every machine
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#888888",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "path.simplify": False,
    # a fixed title height: matplotlib skips placing each title above the tick labels (a
    # third of a fan chart's render time); no axes here has ticks on top, so same pixels
    "axes.titley": 1.0,
}


def model_colors(models: Iterable[str], benchmark: str | None = None) -> dict[str, str]:
    """A stable colour per model (sorted names, palette order); the benchmark gets grey."""
    names = sorted(set(models))
    others = [m for m in names if m != benchmark]
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(others)}
    if benchmark in names:
        colors[benchmark] = "#555555"
    return colors


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = DPI) -> Path:
    """Write `fig` as a PNG atomically, without Software/date metadata; returns the path."""
    path = Path(path)
    FigureCanvasAgg(fig)  # render with Agg whatever the process-wide backend is
    with matplotlib.rc_context(STYLE), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path


def _covid_span(ax, times: pd.Index) -> None:
    """Hatch the COVID months inside the plotted range (hatched, so no band is mistaken for it)."""
    lo = max(pd.Timestamp(evaluate.COVID_START), times.min())
    hi = min(pd.Timestamp(evaluate.COVID_END) + pd.offsets.MonthBegin(1), times.max())
    if lo < hi:
        ax.axvspan(lo, hi, facecolor=COVID_COLOR, edgecolor=COVID_HATCH, hatch="///", lw=0,
                   zorder=0, label="COVID months")  # fmt: skip


def fan_chart(
    frame: pd.DataFrame,
    country: str,
    horizon: int,
    *,
    models: Sequence[str] | None = None,
    benchmark: str | None = "ar_qr",
) -> Figure:
    """One panel per model: the actual series against the model's quantile fan for `country`
    at `horizon` (bands between symmetric quantile pairs, line at the median level)."""
    rows = frame.loc[(frame["COUNTRY"] == country) & (frame["HORIZON"] == horizon)]
    if rows.empty:
        raise ValueError(
            f"country/horizon must have forecasts in frame; got country={country!r}, horizon={horizon!r}"
        )
    if models is None:  # the benchmark first: it is the reference the others are read against
        models = sorted(rows["MODEL"].unique().tolist(), key=lambda m: (m != benchmark, m))
    names = list(models)
    colors = model_colors(frame["MODEL"].unique().tolist(), benchmark)
    actual = rows.dropna(subset=["ACTUAL"]).groupby("TIME")["ACTUAL"].first().sort_index()
    target = ", ".join(sorted(rows["TARGET"].dropna().unique().tolist()))
    with matplotlib.rc_context(STYLE):
        height = 1.0 + 2.3 * len(names)
        # fixed margins (in inches) instead of constrained layout: half the render time, and
        # fan charts are the bulk of the PNGs
        fig = Figure(figsize=(10, height))
        axes = fig.subplots(len(names), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
        fig.subplots_adjust(left=0.07, right=0.985, top=1 - 0.62 / height, bottom=0.62 / height,
                            hspace=0.42 * len(names) / (height - 1.24))  # fmt: skip
        for ax, name in zip(axes, names, strict=True):
            _fan_panel(ax, rows.loc[rows["MODEL"] == name], actual, colors.get(name, PALETTE[0]))
            ax.set_title(name, loc="left")
            ax.set_ylabel(target or "value")
        axes[0].legend(loc="lower right", ncols=4, bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2)
        locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        axes[-1].set_xlabel("month forecast (origin + horizon)")
        times = rows["TIME"]
        pad = pd.Timedelta(days=20)
        axes[-1].set_xlim(times.min() - pad, times.max() + pad)
        fig.suptitle(f"{country}: {horizon}-month-ahead quantile forecasts vs actual", fontsize=12)
    return fig


def _fan_panel(ax, rows: pd.DataFrame, actual: pd.Series, color: str) -> None:
    grid = rows.pivot_table(index="TIME", columns="QUANTILE", values="FORECAST", aggfunc="first")
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
    ax.plot(times, grid.iloc[:, mid], color=color, lw=1.8, label=f"q{levels[mid]:g} forecast")
    shown = actual.loc[(actual.index >= times.min()) & (actual.index <= times.max())]
    ax.plot(shown.index, shown.to_numpy(), color=ACTUAL_COLOR, lw=1.3, marker="o", ms=2.2,
            label="actual")  # fmt: skip
    summary = _panel_summary(grid, actual)
    if summary:
        ax.text(0.995, 0.03, summary, transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, color="#333333",
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#cccccc", "alpha": 0.9})  # fmt: skip


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


def _two_periods(title: str, width: float = 11.0, height: float = 4.2):
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    fig.suptitle(title, fontsize=12)
    covid = f"excluding COVID months ({evaluate.COVID_START} to {evaluate.COVID_END})"
    return (
        fig,
        dict(zip(("all", "ex_covid"), axes, strict=True)),
        {"all": "all months", "ex_covid": covid},
    )


def pinball_chart(frame: pd.DataFrame, *, benchmark: str | None = "ar_qr") -> Figure:
    """Mean pinball loss (over quantiles and countries) by horizon, one line per model; all
    months vs COVID months excluded."""
    colors = model_colors(frame["MODEL"].unique().tolist(), benchmark)
    with matplotlib.rc_context(STYLE):
        fig, axes, titles = _two_periods("Mean pinball loss by horizon (lower is better)")
        for period, part in (("all", frame), ("ex_covid", evaluate.exclude_covid(frame))):
            ax = axes[period]
            table = evaluate.pinball(part, by=("MODEL", "HORIZON"))
            for name, rows in table.groupby("MODEL", sort=True):
                dashed = name == benchmark
                ax.plot(rows["HORIZON"], rows["PINBALL"], marker="o", ms=4.5, lw=1.8,
                        ls="--" if dashed else "-", color=colors[name],
                        label=f"{name} (benchmark)" if dashed else name)  # fmt: skip
            ax.set_title(titles[period], loc="left")
            ax.set_xlabel("horizon (months)")
            horizons = sorted(frame["HORIZON"].unique().tolist())
            ax.set_xticks(horizons if len(horizons) <= 12 else horizons[:: len(horizons) // 12 + 1])
            if table.empty:
                ax.text(0.5, 0.5, "no scored forecasts", transform=ax.transAxes, ha="center")
        axes["all"].set_ylabel("mean pinball loss")
        if axes["all"].get_legend_handles_labels()[0]:
            axes["all"].legend(loc="best")
    return fig


def coverage_chart(frame: pd.DataFrame, *, benchmark: str | None = "ar_qr") -> Figure:
    """Empirical coverage (share of actuals at or below the forecast) against the nominal
    quantile level, pooled over horizons and countries; the diagonal is perfect calibration."""
    colors = model_colors(frame["MODEL"].unique().tolist(), benchmark)
    with matplotlib.rc_context(STYLE):
        fig, axes, titles = _two_periods("Coverage by quantile level (closer to the diagonal is better)", height=4.6)  # fmt: skip
        for period, part in (("all", frame), ("ex_covid", evaluate.exclude_covid(frame))):
            ax = axes[period]
            ax.plot([0, 1], [0, 1], color="#777777", lw=1.0, ls=":", label="nominal")
            table = evaluate.coverage(part, by=("MODEL", "QUANTILE"))
            for name, rows in table.groupby("MODEL", sort=True):
                ax.plot(rows["QUANTILE"], rows["COVERAGE"], marker="o", ms=5, lw=1.5,
                        ls="--" if name == benchmark else "-", color=colors[name],
                        label=f"{name} (benchmark)" if name == benchmark else name)  # fmt: skip
            levels = sorted(frame["QUANTILE"].unique().tolist())
            ax.set_xticks(levels, [f"{q:g}" for q in levels])
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(titles[period], loc="left")
            ax.set_xlabel("nominal quantile level")
        axes["all"].set_ylabel("share of actuals ≤ forecast")
        axes["all"].legend(loc="upper left")
    return fig


def reliability_chart(frame: pd.DataFrame, *, suffix: str = "_cal") -> Figure:
    """Reliability diagram, raw against calibrated: observed hit rate (share of actuals at or
    below the forecast, pooled over countries and horizons) against the nominal level, one
    panel per model that has a `<model>{suffix}` variant (solid raw, dashed calibrated)."""
    present = set(frame["MODEL"].unique().tolist())
    bases = sorted(m for m in present if not m.endswith(suffix) and f"{m}{suffix}" in present)
    table = evaluate.coverage(frame, by=("MODEL", "QUANTILE"))
    colors = model_colors(bases)
    n = max(len(bases), 1)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.2 * cols, 3.1 * rows + 0.5), layout="constrained")
        fig.suptitle(
            "Reliability: observed hit rate vs nominal level (raw solid, calibrated dashed)"
        )
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(bases) :]:
            ax.set_axis_off()
        if not bases:
            axes[0].set_axis_on()
            axes[0].text(0.5, 0.5, "no calibrated variants", transform=axes[0].transAxes,
                         ha="center")  # fmt: skip
        for ax, base in zip(axes, bases, strict=False):
            ax.plot([0, 1], [0, 1], color="#777777", lw=1.0, ls=":")
            for name, style in ((base, "-"), (f"{base}{suffix}", "--")):
                part = table.loc[table["MODEL"] == name]
                ax.plot(part["QUANTILE"], part["COVERAGE"], marker="o", ms=4, lw=1.5, ls=style,
                        color=colors[base], label=name)  # fmt: skip
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(base, loc="left")
            ax.legend(loc="upper left")
    return fig
