"""assemble's charts, rendered only when what they plot changed (issue 13, item 5).

Each chart has an input hash: its kind and arguments, the rows of the forecast table it plots
(pandas' row hashes of those rows, all columns), the models present and their colour order, and
a fingerprint of the plotting code, matplotlib's version and the DPI. `logs/charts.json` (not
a DVC output: logs/ is a run log) records per PNG that hash and the sha256 of the bytes written.
A chart is re-rendered unless its PNG is there with exactly those bytes and the same input
hash, so the outputs are the same bytes as a full render (PNGs are deterministic: no date or
software metadata). Under `dvc repro` assemble's outputs are deleted before it runs, so every
chart is rendered there.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation import plots
from pipeline.evaluation.calibration import CAL_SUFFIX
from pipeline.evaluation.report import ReportImage
from pipeline.io import read_json, stable_hash, write_json

log = logging.getLogger("pipeline.stages.assemble")
MANIFEST = Path("logs") / "charts.json"


def write_charts(
    output_dir: Path,
    frame: pd.DataFrame,
    benchmark: str,
    fans: list[tuple[str, int]],
    order: Sequence[str] = (),
) -> list[ReportImage]:
    """The two metric charts (plus reliability when calibrated rows exist) and one fan chart
    per (country, horizon) in `fans`, under reports/; unchanged charts are not rendered.
    `order` fixes each model's colour, the same in every chart (`plots.model_colors`)."""
    rdir = output_dir / "reports"
    manifest_path = output_dir / MANIFEST
    try:
        old = read_json(manifest_path) if manifest_path.exists() else {}
    except ValueError:  # a torn manifest: render everything
        old = {}
    new: dict[str, dict[str, str]] = {}
    models = sorted(frame["MODEL"].unique().tolist())
    common = {"code": _code_fingerprint(), "models": models, "order": list(order)}
    whole = _rows_hash(frame)
    rendered = 0

    def chart(src: str, kind: str, args: dict[str, Any], rows: str, make: Callable[[], Any]):
        nonlocal rendered
        inputs = stable_hash({**common, "kind": kind, "args": args, "rows": rows}, 64)
        path = rdir / src
        seen = old.get(src, {}) if isinstance(old, dict) else {}
        if seen.get("inputs") == inputs and path.exists() and _sha(path) == seen.get("sha256"):
            new[src] = seen
            return
        plots.save_figure(make(), path)
        rendered += 1
        new[src] = {"inputs": inputs, "sha256": _sha(path)}

    b = {"benchmark": benchmark}
    # The two metric charts read the metric columns only, MODEL and COUNTRY as codes, as the
    # metric tables do: their COVID split then copies those, not every string column (at 3M
    # rows that copy was the driver's peak of the whole run). Same figures, byte for byte.
    compact: list[pd.DataFrame] = []

    def scoring() -> pd.DataFrame:
        if not compact:
            compact.append(evaluate.compact_frame(frame))
        return compact[0]

    chart("pinball_by_horizon.png", "pinball", b, whole,
          lambda: plots.pinball_chart(scoring(), benchmark=benchmark, order=order))  # fmt: skip
    chart("coverage.png", "coverage", b, whole,
          lambda: plots.coverage_chart(scoring(), benchmark=benchmark, order=order))  # fmt: skip
    compact.clear()
    images = [
        ReportImage("pinball_by_horizon.png", "Mean pinball loss by horizon"),
        ReportImage("coverage.png", "Coverage by quantile level"),
    ]
    if frame["MODEL"].str.endswith(CAL_SUFFIX).any():
        chart("reliability.png", "reliability", {"suffix": CAL_SUFFIX}, whole,
              lambda: plots.reliability_chart(frame, suffix=CAL_SUFFIX, order=order))  # fmt: skip
        images.append(ReportImage("reliability.png", "Reliability: raw against calibrated"))
    for country, h in fans:
        src = f"fan/{country}_{evaluate.horizon_label(h)}.png"
        rows = frame.loc[(frame["COUNTRY"] == country) & (frame["HORIZON"] == h)]
        chart(src, "fan", {**b, "country": country, "horizon": int(h)}, _rows_hash(rows),
              lambda c=country, h=h: plots.fan_chart(frame, c, h, benchmark=benchmark, order=order))  # fmt: skip
        caption = f"{country}, {h} month{'s' if h != 1 else ''} ahead"
        images.append(ReportImage(src, caption, evaluate.horizon_label(h)))
    write_json(manifest_path, new)
    log.info("assemble: %d charts rendered, %d unchanged", rendered, len(new) - rendered)
    return images


def _rows_hash(rows: pd.DataFrame) -> str:
    """sha256 of the rows' content (column names, dtypes and pandas' per-row hashes)."""
    digest = hashlib.sha256()
    digest.update(repr([(c, str(t)) for c, t in rows.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _code_fingerprint() -> str:
    import matplotlib

    source = Path(plots.__file__).read_bytes()
    return stable_hash([hashlib.sha256(source).hexdigest(), matplotlib.__version__, plots.DPI])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
