"""The small panel study that the bad-input tests run through the command line: a CSV-ready
frame of three synthetic countries and the `run` arguments that read it (shared by
test_bad_input.py and test_hostile2_data.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from builders import synthetic_settings

from pipeline.data.synthetic import generate_panel


def panel_frame() -> pd.DataFrame:
    """Three countries' monthly inflation, 2014-01 to 2019-12: TIME as 'YYYY-MM', the values
    rounded to 3 decimals (as a user's CSV would hold them)."""
    panel = generate_panel(
        synthetic_settings(n_countries=3, start="2014-01-01", end="2019-12-01", seed=0)
    ).frame
    frame = panel[["TIME", "COUNTRY", "inflation"]].copy()
    frame["TIME"] = frame["TIME"].dt.strftime("%Y-%m")
    frame["inflation"] = frame["inflation"].round(3)
    return frame


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    """`run` of the panel file `data` into `out`: lag 1, horizon 1, six origins of 2019, no
    progress bar; `extra` overrides appended last."""
    return [
        "run",
        "data.source=panel",
        f"data.path={data}",
        "data.target=inflation",
        "data.lags=[1]",
        "data.horizons=[1]",
        "rolling_window.size=24",
        "rolling_window.start_date=2019-01-01",
        "rolling_window.end_date=2019-06-01",
        f"runtime.output_dir={out}",
        "runtime.progress_bar=false",
        *extra,
    ]
