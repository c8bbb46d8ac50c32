"""The forecast table's string and timestamp columns made from their codes
(runtime/fits/forecast_columns.py) equal what pyarrow makes of the same values: strings made
per run of a code (COUNTRY leads the sort) or per row where the runs are short, timestamps
from months seen in any order (the stamps' span grows as chunks need it).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.runtime.fits.forecast_columns import Stamps, Strings


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strings_per_run_equal_a_take_per_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = ["AT", "BE", "Österreich", "", "C0123456789", "ZZ"]
    column = Strings(names)
    want_values = pa.array(names, pa.large_string())
    runs = np.sort(rng.integers(0, len(names), 500)).astype(np.int32)  # a sorted chunk
    scattered = rng.integers(0, len(names), 500).astype(np.int32)  # no runs: per row
    for codes in (runs, scattered, runs[:1], runs[:0], np.full(70, 2, np.int32)):
        got = column.take(codes)
        assert got.type == pa.large_string() and got.null_count == 0
        assert got.equals(want_values.take(pa.array(codes))), codes
    assert column.constant(3).to_pylist() == ["AT"] * 3


def test_stamps_of_months_in_any_order_equal_pyarrows() -> None:
    from pipeline.schema import month_index

    stamps = Stamps()
    epoch = month_index("1970-01-01")
    for months in ([24100, 24105], [24000, 24300, 24001], [23990], [], [24400, 24000]):
        m = np.array(months, dtype=np.int64)
        want = pa.array((m - epoch).astype("datetime64[M]").astype("datetime64[ns]"))
        got = stamps(m)
        assert got.type == pa.timestamp("ns") and got.null_count == 0
        assert got.equals(want), months
