"""train writes TARGET and MODEL, one value in every row, as dictionary arrays of that value
(forecast_rows.table_chunks(encoded=True), of forecast_rows.written_schema()): pyarrow writes
a dictionary array's dictionary and indices as they are instead of hashing every row's
string, and pipeline.io.write_parquet_tables stores the plain schema for readers. The file
must be the plain chunks' file byte for byte, whatever the study, the chunk size and the
encodings, the empty table included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_forecast_blocks import random_study

from pipeline.io import write_parquet_tables
from pipeline.runtime.fits.forecast_rows import TABLE_OPTIONS, table_chunks, written_schema
from pipeline.runtime.fits.kept_forecasts import KeptForecasts
from pipeline.schema import forecast_arrow_schema


def _file(path: Path, schema: pa.Schema, chunks: object, options: object) -> bytes:
    write_parquet_tables(path, schema, chunks, options=options)  # type: ignore[arg-type]
    return path.read_bytes()


@pytest.mark.parametrize("model", ["rw", "ar_qr", "ensemble_nn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_encoded_chunks_write_the_plain_chunks_file(tmp_path: Path, model: str, seed: int) -> None:
    (groups, pred, alpha, have, config, model, panel), _ = random_study(model, seed)
    nothing = [h & False for h in have]
    for known in (have, nothing):
        kept = KeptForecasts.of_arrays(pred, alpha, known)
        for chunk in (5, 37, 1 << 16):
            plain = list(table_chunks(groups, kept, config, model, panel, chunk=chunk))
            encoded = list(
                table_chunks(groups, kept, config, model, panel, chunk=chunk, encoded=True)
            )
            assert [t.num_rows for t in encoded] == [t.num_rows for t in plain]
            for got, want in zip(encoded, plain, strict=True):
                assert got.schema == written_schema()
                for name in ("TARGET", "MODEL"):
                    assert pa.types.is_dictionary(got.schema.field(name).type)
                    assert len(got.column(name).chunk(0).dictionary) == min(got.num_rows, 1)
                assert got.cast(forecast_arrow_schema()).equals(want)
            for options in (TABLE_OPTIONS, None, {"use_dictionary": False}):
                want = _file(tmp_path / "plain.parquet", forecast_arrow_schema(), plain, options)
                got = _file(tmp_path / "encoded.parquet", written_schema(), encoded, options)
                assert got == want
            read = pq.read_table(tmp_path / "encoded.parquet")
            assert read.schema == forecast_arrow_schema()
            assert read.num_rows == sum(t.num_rows for t in plain)


def test_a_dictionary_column_keeps_the_schemas_metadata(tmp_path: Path) -> None:
    schema = pa.schema(
        [("A", pa.large_string()), ("B", pa.float64())], metadata={"k": "v", "a": "b"}
    )
    plain = pa.table({"A": pa.array(["x"] * 9, pa.large_string()), "B": np.arange(9.0)}, schema)
    one = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(9, np.int32)), pa.array(["x"], pa.large_string())
    )
    encoded = pa.table({"A": one, "B": np.arange(9.0)})
    as_dictionary = schema.set(0, schema.field(0).with_type(one.type))
    write_parquet_tables(tmp_path / "plain.parquet", schema, [plain])
    write_parquet_tables(tmp_path / "encoded.parquet", as_dictionary, [encoded])
    assert (tmp_path / "plain.parquet").read_bytes() == (tmp_path / "encoded.parquet").read_bytes()
    assert pq.read_schema(tmp_path / "encoded.parquet").metadata == schema.metadata


def test_tables_of_other_types_are_refused(tmp_path: Path) -> None:
    schema = pa.schema([("A", pa.dictionary(pa.int32(), pa.large_string()))])
    other = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array(["x"]))
    with pytest.raises(ValueError, match="schema"):  # a dictionary of string, not large_string
        write_parquet_tables(tmp_path / "x.parquet", schema, [pa.table({"A": other})])
    assert not (tmp_path / "x.parquet").exists()
