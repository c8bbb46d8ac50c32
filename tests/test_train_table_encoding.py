"""train/<model>.parquet's encodings (forecast_rows.TABLE_OPTIONS): a dictionary only on the
columns of few distinct values, min/max statistics only on the sort keys that vary, so a
reader can skip row groups by COUNTRY (the sort's lead) and the write spends nothing on the
rest; LZ4 but on the forecasts (left uncompressed). The values read back are the chunks written, whatever the encodings.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_forecast_blocks import random_study

from pipeline.io import write_parquet_tables
from pipeline.runtime.fits.forecast_rows import (
    DICTIONARY,
    STATISTICS,
    TABLE_OPTIONS,
    forecast_chunks,
)
from pipeline.schema import FORECAST_COLUMNS, forecast_arrow_schema


def test_dictionaries_and_statistics_only_where_they_pay(tmp_path: Path) -> None:
    args, _ = random_study("ar_qr", 0)
    chunks = list(forecast_chunks(*args, chunk=37))
    path = tmp_path / "train.parquet"
    write_parquet_tables(path, forecast_arrow_schema(), iter(chunks), options=TABLE_OPTIONS)
    file = pq.ParquetFile(path)
    assert file.read().equals(pa.concat_tables(chunks))
    assert [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)] == [
        t.num_rows for t in chunks
    ]
    assert set(STATISTICS) < set(FORECAST_COLUMNS) and set(DICTIONARY) < set(FORECAST_COLUMNS)
    for i in range(file.num_row_groups):
        group = file.metadata.row_group(i)
        for j, name in enumerate(FORECAST_COLUMNS):
            column = group.column(j)
            assert column.has_dictionary_page is (name in DICTIONARY), name
            has_min_max = column.is_stats_set and column.statistics.has_min_max
            assert has_min_max is (name in STATISTICS), name
            codec = "UNCOMPRESSED" if name == "FORECAST" else "LZ4"
            assert column.compression.startswith(codec), (name, column.compression)


def test_a_reader_skips_row_groups_by_country(tmp_path: Path) -> None:
    """COUNTRY's per row group min/max are in order (it leads the sort) and a filtered read
    gets a country's rows from the row groups whose range holds it."""
    args, _ = random_study("ar_qr", 1)
    chunks = list(forecast_chunks(*args, chunk=37))
    path = tmp_path / "train.parquet"
    write_parquet_tables(path, forecast_arrow_schema(), iter(chunks), options=TABLE_OPTIONS)
    meta = pq.ParquetFile(path).metadata
    at = FORECAST_COLUMNS.index("COUNTRY")
    ranges = [
        (meta.row_group(i).column(at).statistics.min, meta.row_group(i).column(at).statistics.max)
        for i in range(meta.num_row_groups)
    ]
    assert all(lo <= hi for lo, hi in ranges)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    table = pa.concat_tables(chunks)
    country = sorted(set(table.column("COUNTRY").to_pylist()))[1]
    holding = [i for i, (lo, hi) in enumerate(ranges) if lo <= country <= hi]
    assert 0 < len(holding) < meta.num_row_groups
    got = pq.read_table(path, filters=[("COUNTRY", "==", country)])
    want = table.filter(pa.compute.equal(table.column("COUNTRY"), country))
    assert got.equals(want)
