"""A directory of per-country files (the seed's `processed_per_country` layout), read with Dask.

Each file is `<COUNTRY>.csv`, `.csv.gz` or `.parquet` holding TIME plus value columns; the
country comes from the file name. The files are the partitions of one dask.dataframe
(`dd.from_map`), so a large panel is read file by file; every file must have the same columns.
"""

from __future__ import annotations

from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd

from pipeline.data.errors import DataError
from pipeline.data.files import NO_LIMITS, ReadLimits, read_csv_text, read_parquet_file
from pipeline.schema import COUNTRY, TIME

_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def country_of(path: Path) -> str:
    name = path.name
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def country_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_SUFFIXES)
    )
    if not files:
        raise DataError(
            f"data.path {folder} is a directory without per-country files; put one "
            f"<COUNTRY>.csv or <COUNTRY>.parquet per country there (TIME plus value columns)"
        )
    return files


def read_country_file(
    path: Path, columns: tuple[str, ...] | None = None, limits: ReadLimits = NO_LIMITS
) -> pd.DataFrame:
    """One file as a tidy frame: its country (from the name) as COUNTRY, TIME, value columns.

    The chunk check of `limits` sees each chunk with its COUNTRY column already in place.
    """
    if limits.check is not None:
        check, country = limits.check, country_of(path)

        def check_file(chunk: pd.DataFrame) -> None:
            try:
                check(_with_country(chunk, country))
            except DataError as error:  # the check names data.path, the folder: name the file
                raise DataError(f"{error} (in {path})") from None

        limits = ReadLimits(limits.max_bytes, check_file)
    frame = (
        read_parquet_file(path, limits)
        if path.suffix.lower() in (".parquet", ".pq")
        else read_csv_text(path, limits)
    )
    if TIME not in frame.columns:
        raise DataError(f"{path} has no {TIME} column; columns are {list(frame.columns)}")
    if COUNTRY in frame.columns:
        raise DataError(
            f"{path} has a {COUNTRY} column; in a per-country directory the country is the "
            "file name: drop the column (or use one panel file with data.path=FILE)"
        )
    if columns is not None and tuple(frame.columns) != columns:
        raise DataError(
            f"{path} has columns {list(frame.columns)}, the first file {list(columns)}; "
            "give every per-country file the same columns"
        )
    frame.insert(1, COUNTRY, country_of(path))
    return frame


def _with_country(chunk: pd.DataFrame, country: str) -> pd.DataFrame:
    if COUNTRY in chunk.columns:
        return chunk  # read_country_file names that problem itself
    return chunk.assign(**{COUNTRY: country})


def read_country_dir(folder: Path, limits: ReadLimits = NO_LIMITS) -> pd.DataFrame:
    """Every per-country file of `folder` as one tidy frame (one Dask partition per file)."""
    files = country_files(folder)
    first = read_country_file(files[0], limits=limits)
    columns = tuple(c for c in first.columns if c != COUNTRY)
    dtypes = {c: (first[c].dtype if c == TIME else object) for c in first.columns}
    frame = dd.from_map(
        lambda path: read_country_file(path, columns, limits).astype(dtypes),
        files,
        meta=first.iloc[0:0].astype(dtypes),
    )
    with dask.config.set(scheduler="synchronous"):  # small files: no thread start-up per call
        return frame.compute().reset_index(drop=True)
