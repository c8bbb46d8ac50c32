"""assemble's charts, rendered only when what they plot changed (issue 13, item 5), and on the
second core while assemble computes its metric tables (issue 19, item 4).

Each chart has an input hash: its kind and arguments, the rows of the forecast table it plots
(a sha256 of those rows' columns, `_rows_hash`), the models present and their colour order, and
a fingerprint of the plotting code, matplotlib's version and the DPI. `logs/charts.json` (not
a DVC output: logs/ is a run log) records per PNG that hash and the sha256 of the bytes written.
A chart is re-rendered unless its PNG is there with exactly those bytes and the same input
hash, so the outputs are the same bytes as a full render (PNGs are deterministic: no date or
software metadata). Under `dvc repro` assemble's outputs are deleted before it runs, so every
chart is rendered there.

`plan_charts` decides what to render. A fork of assemble's process (stages/assemble_fork.py:
it holds the frame already) renders some of the stale charts on the second core: the one
assemble made for its test tables at scale (`ChartRun.start`), else one made for the charts
(`ChartRun.start_forked`). It returns PNG bytes; this process owns the files and writes them.
`ChartRun.finish`, called after the metric tables, renders here what the fork has not
started, from the end of the queue, then collects its PNGs: the same bytes as rendering
everything here (tests/test_assemble.py).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation import plot_style, plots
from pipeline.evaluation.calibration import CAL_SUFFIX
from pipeline.evaluation.report import ReportImage
from pipeline.io import atomic_path, read_json, stable_hash, write_json
from pipeline.stages import assemble_fork
from pipeline.stages.assemble_fork import Fork

log = logging.getLogger("pipeline.stages.assemble")
MANIFEST = Path("logs") / "charts.json"
# Stale charts from which a fork of this process (assemble_fork.py: a few milliseconds to
# start) renders some of them, when a core is idle.
FORK_MIN_CHARTS = 2


@dataclass(frozen=True)
class _Chart:
    src: str  # relative to reports/
    kind: str  # "pinball", "coverage", "reliability" or "fan"
    args: dict[str, Any]  # JSON values: part of the input hash, and what the fork is sent
    inputs: str  # the input hash
    panels: int  # a rough cost


def figure(frame: pd.DataFrame, kind: str, args: dict[str, Any], order: Sequence[str]) -> Any:
    """The matplotlib Figure of one chart of `frame` (pure: the same in either process)."""
    if kind == "pinball":
        return plots.pinball_chart(frame, benchmark=args["benchmark"], order=order)
    if kind == "coverage":
        return plots.coverage_chart(frame, benchmark=args["benchmark"], order=order)
    if kind == "reliability":
        return plots.reliability_chart(frame, suffix=args["suffix"], order=order)
    if kind == "fan":
        return plots.fan_chart(frame, args["country"], args["horizon"], benchmark=args["benchmark"],
                               order=order, palette=args["palette"])  # fmt: skip
    raise ValueError(f"kind must be pinball, coverage, reliability or fan; got {kind!r}")


class ChartRun:
    """The charts of one assemble: planned by `plan_charts`, handed to a fork by `start`,
    written by `finish`. `close` stops the feeding; `finish` calls it, a failed assemble must.

    The stale charts wait in one queue: a feeder thread hands the fork one at a time from
    the front (waiting on it holds no GIL), `finish` renders here from the back, so both end
    together whatever the machine's load."""

    def __init__(
        self,
        output_dir: Path,
        charts: list[_Chart],
        stale: list[_Chart],
        images: list[ReportImage],
        old: dict[str, dict[str, str]],
        order: Sequence[str],
    ) -> None:
        self._output_dir, self._charts, self._stale = output_dir, charts, stale
        self._images, self._old, self._order = images, old, list(order)
        self._queue = collections.deque(stale)
        self._lock = threading.Lock()
        self._pngs: dict[str, bytes] = {}
        self._by_fork = 0
        self._error: BaseException | None = None
        self._feeder: threading.Thread | None = None
        self._fork: Fork | None = None  # made by start_forked (closed by close)

    def start(self, fork: Fork) -> None:
        """Let `fork` render the stale charts from the front of the queue meanwhile."""
        self._feeder = threading.Thread(target=self._feed, args=(fork,), daemon=True)
        self._feeder.start()

    def start_forked(self, frame: pd.DataFrame, idle: assemble_fork.IdleMeter) -> None:
        """Let a fork of this process render stale charts from the front of the queue
        meanwhile (it holds `frame`), when there are a few and a second core was idle since
        `idle` was made; closed by `close`."""
        if len(self._queue) < FORK_MIN_CHARTS:
            return
        self._fork = assemble_fork.start(frame, idle, "the charts")
        if self._fork is not None:
            self.start(self._fork)

    def _feed(self, fork: Fork) -> None:
        chart = None
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        return
                    chart = self._queue.popleft()
                png = fork.submit(render_png, chart.kind, chart.args, self._order).result()
                with self._lock:
                    self._pngs[chart.src] = png
                    self._by_fork += 1
                chart = None
        except BrokenProcessPool:  # the fork died (killed for memory?): finish renders it
            log.warning("assemble: the forked process died; rendering its charts here")
        except BaseException as exc:  # re-raised by finish, in the caller's thread
            self._error = exc
        if chart is not None:
            with self._lock:
                self._queue.appendleft(chart)

    def _take_last(self) -> _Chart | None:
        with self._lock:
            return self._queue.pop() if self._queue else None

    def finish(self, frame: pd.DataFrame) -> list[ReportImage]:
        """Render what is stale (here, or collect it from the fork), write the PNGs and
        the manifest; the report's images."""
        # The metric charts read the metric columns only, MODEL and COUNTRY as codes, as the
        # metric tables do: their COVID split then copies those, not every string column (at
        # 3M rows that copy was the driver's peak of the whole run). Same PNG bytes.
        compact: list[pd.DataFrame] = []

        def render(chart: _Chart) -> bytes:
            rows = frame
            if chart.kind in ("pinball", "coverage"):
                if not compact:
                    compact.append(evaluate.compact_frame(frame))
                rows = compact[0]
            return render_png(rows, chart.kind, chart.args, self._order)

        while (chart := self._take_last()) is not None:
            self._pngs[chart.src] = render(chart)
        self.close()  # waits for the fork's last chart
        if self._error is not None:
            raise self._error
        while (chart := self._take_last()) is not None:  # one the fork gave back
            self._pngs[chart.src] = render(chart)
        compact.clear()
        rdir, pngs = self._output_dir / "reports", self._pngs
        new: dict[str, dict[str, str]] = {}
        for chart in self._charts:
            if chart.src in pngs:
                with atomic_path(rdir / chart.src) as tmp:
                    tmp.write_bytes(pngs[chart.src])
                sha = hashlib.sha256(pngs[chart.src]).hexdigest()
                new[chart.src] = {"inputs": chart.inputs, "sha256": sha}
            else:
                new[chart.src] = self._old[chart.src]
        write_json(self._output_dir / MANIFEST, new)
        log.info("assemble: %d charts rendered, %d unchanged (%d rendered by the forked process)",
                 len(self._stale), len(self._charts) - len(self._stale), self._by_fork)  # fmt: skip
        return self._images

    def close(self) -> None:
        """Stop feeding the fork after its current chart (what it has not started renders
        in `finish`, or not at all after a failure)."""
        if self._feeder is not None:
            with self._lock:
                left = list(self._queue)
                self._queue.clear()
            self._feeder.join()
            with self._lock:  # back in the queue: what finish has left to render
                self._queue.extendleft(reversed(left))
            self._feeder = None
        if self._fork is not None:
            self._fork.close()
            self._fork = None


def plan_charts(
    output_dir: Path,
    frame: pd.DataFrame,
    benchmark: str,
    fans: list[tuple[str, int]],
    order: Sequence[str] = (),
) -> ChartRun:
    """Plan the two metric charts (plus reliability when calibrated rows exist) and one fan
    chart per (country, horizon) in `fans`, under reports/; `order` fixes each model's colour,
    the same in every chart (`plots.model_colors`). Nothing is rendered yet."""
    manifest_path = output_dir / MANIFEST
    try:
        old = read_json(manifest_path) if manifest_path.exists() else {}
    except ValueError:  # a torn manifest: render everything
        old = {}
    old = old if isinstance(old, dict) else {}
    models = sorted(frame["MODEL"].unique().tolist())
    common = {"code": _code_fingerprint(), "models": models, "order": list(order)}
    whole = _rows_hash(frame)
    charts: list[_Chart] = []

    def chart(src: str, kind: str, args: dict[str, Any], rows: str, panels: int) -> None:
        inputs = stable_hash({**common, "kind": kind, "args": args, "rows": rows}, 64)
        charts.append(_Chart(src, kind, args, inputs, panels))

    b = {"benchmark": benchmark}
    chart("pinball_by_horizon.png", "pinball", b, whole, 2)
    chart("coverage.png", "coverage", b, whole, 2)
    images = [
        ReportImage("pinball_by_horizon.png", "Mean pinball loss by horizon"),
        ReportImage("coverage.png", "Coverage by quantile level"),
    ]
    if frame["MODEL"].str.endswith(CAL_SUFFIX).any():
        chart("reliability.png", "reliability", {"suffix": CAL_SUFFIX}, whole, len(models) // 2)
        images.append(ReportImage("reliability.png", "Reliability: raw against calibrated"))
    # each fan's rows by integer codes (not a string comparison over every row per chart)
    country_codes, countries = pd.factorize(frame["COUNTRY"])
    horizons = frame["HORIZON"].to_numpy()
    for country, h in fans:
        src = f"fan/{country}_{evaluate.horizon_label(h)}.png"
        code = countries.get_indexer([country])[0]
        rows = frame.take(np.flatnonzero((country_codes == code) & (horizons == h)))
        # the study's models (their colours), not found again over every row per chart
        args = {**b, "country": country, "horizon": int(h), "palette": models}
        chart(src, "fan", args, _rows_hash(rows), rows["MODEL"].nunique())
        caption = f"{country}, {h} month{'s' if h != 1 else ''} ahead"
        images.append(ReportImage(src, caption, evaluate.horizon_label(h)))
    stale = [c for c in charts if not _unchanged(output_dir / "reports" / c.src, c, old)]
    # the costliest first: the fork takes the queue from the front, finish() from the end
    stale.sort(key=lambda c: -c.panels)
    return ChartRun(output_dir, charts, stale, images, old, order)


def render_png(frame: pd.DataFrame, kind: str, args: dict[str, Any], order: Sequence[str]) -> bytes:
    """One chart's PNG bytes (here or in the fork)."""
    return plots.png_bytes(figure(frame, kind, args, order))


def _unchanged(path: Path, chart: _Chart, old: dict[str, Any]) -> bool:
    seen = old.get(chart.src, {})
    seen = seen if isinstance(seen, dict) else {}
    return seen.get("inputs") == chart.inputs and path.exists() and _sha(path) == seen.get("sha256")


def _rows_hash(rows: pd.DataFrame) -> str:
    """sha256 of the rows' content: column names and dtypes, then each column's values (numbers
    and dates as their bytes; anything else as its codes and distinct values, in order of
    appearance: one pass of sha256 over the buffers, not pandas' per-row hashes)."""
    digest = hashlib.sha256()
    # a lean frame's categorical column hashes as the string column it stands for (its
    # values below are the same): the manifest's hashes do not depend on how assemble holds it
    names = [
        (c, "string" if isinstance(t, pd.CategoricalDtype) else str(t))
        for c, t in rows.dtypes.items()
    ]
    digest.update(repr(names).encode())
    digest.update(f"|{len(rows)}".encode())
    for name in rows.columns:
        column = rows[name]
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biufmM":
            digest.update(np.ascontiguousarray(column.to_numpy()).view(np.uint8))
        else:
            codes, values = pd.factorize(column)
            digest.update(np.ascontiguousarray(codes, dtype=np.int64).view(np.uint8))
            digest.update(repr(values.tolist()).encode())
    return digest.hexdigest()


def _code_fingerprint() -> str:
    """What a chart's bytes depend on besides its rows: the plotting code, matplotlib (the
    pixels), Pillow and zlib (the PNG encoding), DPI and compression level."""
    import zlib

    import matplotlib
    import PIL

    sources = [
        hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in (plots, plot_style)
    ]
    return stable_hash([*sources, matplotlib.__version__, PIL.__version__,
                        zlib.ZLIB_RUNTIME_VERSION, plot_style.DPI, plot_style.PNG_COMPRESS_LEVEL])  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
