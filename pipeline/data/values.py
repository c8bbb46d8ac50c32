"""The value columns a study reads (data.target, data.features) become float64, or a DataError.

Every value is a finite number or missing; anything else is named (file, column, how many, in
which countries, examples) before any work starts:
- text that is not a number (`n/a`, `1,5`, `inf`): an error, or with data.non_numeric=coerce
  read as missing with a warning that counts them per country;
- |value| above data.max_abs_value (a unit or parsing slip such as 1e12): an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.data.errors import DataError
from pipeline.schema import COUNTRY, TIME

log = logging.getLogger(__name__)
_EXAMPLES = 3


def to_numeric_columns(
    frame: pd.DataFrame,
    columns: Sequence[str],
    where: str,
    non_numeric: str = "error",
    max_abs_value: float | None = None,
) -> pd.DataFrame:
    """`frame` with `columns` as float64 (missing = NaN); raise DataError on a bad value."""
    frame = frame.copy()
    for column in columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.astype("float64")
            present = values.notna()
        else:
            text = values.astype("string").str.strip()
            present = text.notna() & (text != "")
            numbers = pd.to_numeric(text.where(present), errors="coerce").astype("float64")
        bad = present & ~np.isfinite(numbers.fillna(0.0)) | (present & numbers.isna())
        if bad.any():
            numbers = numbers.where(~bad)
            _report_non_numeric(frame, values, bad, column, where, non_numeric)
        if max_abs_value is not None:
            big = numbers.abs() > max_abs_value
            if big.any():
                raise DataError(
                    f"{where}: column {column!r} has {int(big.sum())} values with |value| > "
                    f"{max_abs_value:g} ({_examples(frame, values, big)}); check the file's "
                    "units, or raise data.max_abs_value (null turns the check off)"
                )
        frame[column] = numbers
    return frame


def _report_non_numeric(
    frame: pd.DataFrame,
    values: pd.Series,
    bad: pd.Series,
    column: str,
    where: str,
    policy: str,
) -> None:
    per_country = frame.loc[bad, COUNTRY].astype("string").value_counts().sort_index()
    counts = ", ".join(f"{country} {n}" for country, n in per_country.items())
    if policy == "error":
        raise DataError(
            f"{where}: column {column!r} has {int(bad.sum())} non-numeric values (per country: "
            f"{counts}; e.g. {_examples(frame, values, bad)}); write numbers with a decimal "
            "point and leave missing values empty, or set data.non_numeric=coerce to read "
            "them as missing"
        )
    log.warning(
        "%s: column %r: %d non-numeric values read as missing (data.non_numeric=coerce); "
        "per country: %s",
        where,
        column,
        int(bad.sum()),
        counts,
    )


def _examples(frame: pd.DataFrame, values: pd.Series, mask: pd.Series) -> str:
    rows = frame.index[mask][:_EXAMPLES]
    parts = []
    for row in rows:
        month = frame.at[row, TIME]
        month = f"{month:%Y-%m}" if isinstance(month, pd.Timestamp) else str(month)
        parts.append(f"{frame.at[row, COUNTRY]} {month}: {values.at[row]!r}")
    return "; ".join(parts)
