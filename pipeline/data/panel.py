"""Generic panel files: any CSV or parquet with TIME, COUNTRY and value columns, or a directory
of per-country files (`pipeline.data.country_files`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.errors import DataError
from pipeline.data.files import (
    NO_LIMITS,
    ReadLimits,
    check_source,
    read_csv_text,
    read_parquet_file,
)


def read_panel_file(path: Path, limits: ReadLimits = NO_LIMITS) -> pd.DataFrame:
    """One panel file (TIME, COUNTRY, value columns), or a directory of per-country files."""
    check_source(path, limits)  # a device, FIFO or oversized file: refused before reading
    if not path.exists():
        raise DataError(
            f"data file {path} does not exist; set data.path to an existing CSV or parquet "
            "file, or to a directory of per-country files"
        )
    if path.is_dir():
        from pipeline.data.country_files import read_country_dir

        return read_country_dir(path, limits)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return read_parquet_file(path, limits)
    if suffix in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
        return read_csv_text(path, limits)
    if suffix in (".tsv", ".gz"):
        from pipeline.data.eurostat import read_eurostat_tsv

        return read_eurostat_tsv(path, limits=limits)
    raise DataError(f"unsupported data file type {suffix!r} for {path}; use .csv, .parquet or .tsv")
