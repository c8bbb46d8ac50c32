"""Data sources. Each returns a tidy frame: TIME (month start), COUNTRY (string), value columns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import DataConfig
from pipeline.data.errors import DataError
from pipeline.data.files import ReadLimits, check_source
from pipeline.schema import COUNTRY, TIME

if TYPE_CHECKING:  # the loaders import it: check_data_path and DataError need no pandas
    import pandas as pd

__all__ = ["DataError", "check_data_path", "load_raw"]


def load_raw(data: DataConfig, root: Path, seed: int = 0) -> pd.DataFrame:
    """Load the configured source as a checked tidy frame. Relative paths resolve against `root`."""
    from pipeline.data.tidy import check_tidy

    if data.source == "synthetic":
        from pipeline.data.synthetic import TARGET_COLUMN, generate_panel

        frame = generate_panel(data.synthetic).frame
        if data.target != TARGET_COLUMN:
            frame = frame.rename(columns={TARGET_COLUMN: data.target})
    elif data.source == "eurostat":
        from pipeline.data.eurostat import load_eurostat

        frame = load_eurostat(data, root, read_limits(data, str(data.path or data.dataset)))
    elif data.source == "panel":
        from pipeline.data.panel import read_panel_file

        frame = read_panel_file(_resolve(data.path, root), read_limits(data, str(data.path)))
    else:  # validated earlier; kept for a clear message if called directly
        raise DataError(f"data.source must be synthetic, eurostat or panel; got {data.source!r}")
    where = "the synthetic panel" if data.source == "synthetic" else str(data.path or data.dataset)
    frame = check_tidy(
        frame, data.target, data.features, where, data.non_numeric, data.max_abs_value
    )
    if data.source != "synthetic":  # synthetic months are the config's own choice
        from pipeline.data.spacing import check_not_future

        check_not_future(frame, data.target, where)
    return frame


def check_data_path(data: DataConfig, root: Path) -> None:
    """Before anything is read or written: data.path is a regular file (within
    data.max_file_mb) or a directory, never a device, FIFO or socket that would hang a read."""
    if data.source != "synthetic" and data.path is not None:
        check_source(_resolve(data.path, root), ReadLimits(int(data.max_file_mb * 2**20)))


def read_limits(data: DataConfig, where: str) -> ReadLimits:
    """data.max_file_mb, and the checks every chunk of a file passes as it streams: months in
    TIME, and (with data.non_numeric=error) numbers in the study's value columns, so a bad
    file fails at its first bad chunk, not after the whole file is in memory."""
    from pipeline.data.tidy import parse_months
    from pipeline.data.values import to_numeric_columns

    columns = [data.target, *data.features]

    def check(chunk: pd.DataFrame) -> None:
        if TIME in chunk.columns:
            parse_months(chunk[TIME], where)
        present = [c for c in columns if c in chunk.columns]
        if data.non_numeric == "error" and COUNTRY in chunk.columns and TIME in chunk.columns:
            to_numeric_columns(chunk, present, where, "error", data.max_abs_value)

    return ReadLimits(max_bytes=int(data.max_file_mb * 2**20), check=check)


def _resolve(path: str | None, root: Path) -> Path:
    if path is None:
        raise DataError("data.path is not set; set data.path=/path/to/panel.csv")
    candidate = Path(path)
    return candidate if candidate.is_absolute() else (root / candidate)
