"""The charts' common look and how a figure becomes PNG bytes (pipeline.evaluation.plots
draws the charts with it).

The same figure gives byte-identical PNGs: a fixed style (`STYLE`, DejaVu Sans, no path
simplification), Agg, and Pillow's encoder with no metadata that would carry a version or a
timestamp. A model has one colour in every chart (`model_colors`, the only place colours are
picked): its index in `order` (the study's models, disabled ones included, so switching one
off or adding one moves no other), and a `<model>_cal` variant is drawn in its model's
colour, dashed.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure

from pipeline.evaluation.calibration import CAL_SUFFIX
from pipeline.io import atomic_path

DPI = 100
PNG_COMPRESS_LEVEL = 1  # zlib: as small as level 6 for these flat charts, at a third the time
# 18 colours, no two closer than CIE76 distance 18 (tests/test_plots_report.py): Okabe-Ito's
# seven (colour-vision-deficiency safe) first, then Paul Tol's and Kelly's. Black is the actual.
PALETTE = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#999933",
    "#332288", "#44AA99", "#AA4499", "#661100", "#117733", "#8DB600", "#BE0032", "#C2B280",
    "#F99379", "#848482",
)  # fmt: skip
ACTUAL_COLOR = "#000000"
NOMINAL_COLOR = "#777777"
NEUTRAL = "#8c8c8c"  # legend keys for what every panel shares (bands, median)
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
    # every artist here is given its colour: a one-entry cycle (each Axes and plot call
    # walks the cycle; the default's ten entries cost ~2 ms per chart), same pixels
    "axes.prop_cycle": matplotlib.rcsetup.cycler(color=[ACTUAL_COLOR]),
}


def base_model(name: str) -> str:
    """The model a `<model>_cal` variant calibrates (a raw model is its own base)."""
    return name[: -len(CAL_SUFFIX)] if name.endswith(CAL_SUFFIX) else name


def model_colors(names: Iterable[str], order: Sequence[str] = ()) -> dict[str, str]:
    """Each model's colour: PALETTE[i], i the index of its base model in `order`, then (for
    bases not in `order`) in name order; `<m>_cal` gets m's colour (`line_style`: dashed)."""
    names = list(names)
    extra = sorted({base_model(n) for n in names} - set(order))
    index = {b: i for i, b in enumerate(dict.fromkeys([*order, *extra]))}
    return {n: PALETTE[index[base_model(n)] % len(PALETTE)] for n in names}


def line_style(name: str) -> str:
    """Dashed for a calibrated variant, solid for a raw model."""
    return "--" if name.endswith(CAL_SUFFIX) else "-"


def ordered(names: Iterable[str], order: Sequence[str] = ()) -> list[str]:
    """Legend order: by base model as in `order` (others by name), each raw before its `_cal`."""
    rank = {b: i for i, b in enumerate(dict.fromkeys(order))}
    return sorted(set(names), key=lambda n: (rank.get(base_model(n), len(rank)), base_model(n), n))


def label(name: str, benchmark: str | None) -> str:
    return f"{name} (benchmark)" if name == benchmark else name


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = DPI) -> Path:
    """Write `fig` as a PNG atomically, without Software/date metadata; returns the path."""
    path = Path(path)
    data = png_bytes(fig, dpi)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """`fig` as PNG bytes (what save_figure writes): a chart rendered in another process
    comes back as bytes, and the process that owns the files writes them. Encoded by Pillow
    (no Software or date chunk), as RGB where opaque (all of ours), at `PNG_COMPRESS_LEVEL`:
    a third of savefig's RGBA level-6 encoding, and smaller."""
    from PIL import Image

    canvas = SharedCanvas(fig)  # render with Agg whatever the process-wide backend is
    fig.set_dpi(dpi)
    with SharedCanvas.lock, matplotlib.rc_context(STYLE):  # built white: STYLE's facecolor
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        opaque = bool((rgba[..., 3] == 255).all())
        # copied out under the lock: the shared renderer draws the next chart of this size
        pixels = np.ascontiguousarray(rgba[..., :3]) if opaque else rgba.copy()
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL, dpi=(dpi, dpi))
    return buffer.getvalue()


class SharedCanvas(FigureCanvasAgg):
    """An Agg canvas whose renderer is shared by every figure of its size: matplotlib caches
    text metrics per renderer, so the tick labels and legend entries that recur from chart
    to chart are measured once per process, not once per chart. Same pixels (a draw clears
    the renderer first); the lock keeps one draw at a time on a shared renderer."""

    lock = threading.Lock()
    _renderers: ClassVar[dict[tuple[float, float, float], RendererAgg]] = {}

    def get_renderer(self) -> RendererAgg:
        key = (*self.get_width_height(physical=True), self.figure.dpi)
        if key not in self._renderers:
            if len(self._renderers) >= 8:  # a few sizes per study; bound the buffers kept
                self._renderers.clear()
            self._renderers[key] = RendererAgg(*key)
        self.renderer, self._lastKey = self._renderers[key], key
        return self.renderer
