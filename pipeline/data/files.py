"""Read a CSV or parquet data file, or turn its failure into one DataError naming file and fix.

CSV cells are read as text (only an empty cell is missing): whether `n/a` or `1,5` is a number
is `pipeline.data.values`' decision, made with the column and country in hand, not pandas'
silent guess.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pandas as pd

from pipeline.data.errors import DataError


def read_csv_text(path: Path) -> pd.DataFrame:
    """Every cell as a string; an empty cell is missing. Compressed files (.gz) are read as is."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path} is empty (no header, no rows); point data.path at a CSV with a header "
            "line (TIME, COUNTRY, value columns) and data rows"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is not a readable CSV ({_first_line(error)}); save it as UTF-8 CSV with "
            "one header line and the same number of cells on every row"
        ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(
            f"{path} is a truncated or corrupt compressed file ({_first_line(error)}); "
            "copy or download it again"
        ) from None
    return _require_rows(frame, path)


def read_parquet_file(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(
            f"{path} is not a readable parquet file ({_first_line(error)}); it may be truncated: "
            "write it again (e.g. DataFrame.to_parquet) or point data.path at another file"
        ) from None
    return _require_rows(frame, path)


def _require_rows(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if frame.empty:
        raise DataError(
            f"{path} has a header ({', '.join(map(str, frame.columns[:6]))}) but no data rows; "
            "add the rows or point data.path at the full file"
        )
    return frame


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
