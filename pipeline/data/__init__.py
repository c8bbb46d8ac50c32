"""Data sources. Each returns a tidy frame: TIME (month start), COUNTRY (string), value columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.errors import DataError
from pipeline.data.tidy import check_tidy

__all__ = ["DataError", "load_raw"]


def load_raw(data: DataConfig, root: Path, seed: int = 0) -> pd.DataFrame:
    """Load the configured source as a checked tidy frame. Relative paths resolve against `root`."""
    if data.source == "synthetic":
        from pipeline.data.synthetic import generate_panel

        frame = generate_panel(data.synthetic).frame
        frame = (
            frame.rename(columns={"inflation": data.target})
            if data.target != "inflation"
            else frame
        )
    elif data.source == "eurostat":
        from pipeline.data.eurostat import load_eurostat

        frame = load_eurostat(data, root)
    elif data.source == "panel":
        from pipeline.data.panel import read_panel_file

        frame = read_panel_file(_resolve(data.path, root))
    else:  # validated earlier; kept for a clear message if called directly
        raise DataError(f"data.source must be synthetic, eurostat or panel; got {data.source!r}")
    where = "the synthetic panel" if data.source == "synthetic" else str(data.path or data.dataset)
    return check_tidy(
        frame, data.target, data.features, where, data.non_numeric, data.max_abs_value
    )


def _resolve(path: str | None, root: Path) -> Path:
    if path is None:
        raise DataError("data.path is not set; set data.path=/path/to/panel.csv")
    candidate = Path(path)
    return candidate if candidate.is_absolute() else (root / candidate)
