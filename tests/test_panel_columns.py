"""Probe and train read the prepared panel as Arrow columns and write their tables without
pandas (issue 18 item 6): each piece equals what the pandas path gave, value for value and byte
for byte (the panel's grid and digest, numpy to and from Arrow, the countries'
codes, origin labels and month indexes; the errors export: tests/test_errors_schema.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import SMALL_STUDY, make_config
from test_tasks import PANEL

from pipeline.data import arrow_columns
from pipeline.data.prepared import PanelColumns, load_panel, load_panel_columns
from pipeline.io import write_parquet
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits import shared_plan
from pipeline.runtime.fits.fit_groups import build_groups, origin_labels, sorted_codes
from pipeline.runtime.fits.fit_windows import country_grid, grid_countries
from pipeline.schema import PANEL_FILE, month_index, month_start


def _columns(
    frame: pd.DataFrame, tmp_path: Path, rows_per_chunk: int | None = None
) -> PanelColumns:
    """`frame` written as prepare writes it (pipeline.io.write_parquet), read back as columns;
    `rows_per_chunk`: each column in chunks of that many rows (as another reader may give)."""
    write_parquet(tmp_path / PANEL_FILE, frame)
    columns = load_panel_columns(tmp_path)
    if rows_per_chunk is None:
        return columns
    return PanelColumns(pa.Table.from_batches(columns.table.to_batches(rows_per_chunk)))


def _with_gaps(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with NaN values scattered over its numeric columns (nulls in the file)."""
    frame = frame.copy()
    rng = np.random.default_rng(0)
    for name in frame.columns[2:]:
        frame.loc[rng.random(len(frame)) < 0.2, name] = np.nan
    return frame


@pytest.mark.parametrize("rows_per_chunk", [None, 7])
def test_the_grid_and_the_digest_are_the_dataframes(tmp_path: Path, rows_per_chunk: int) -> None:
    frame = _with_gaps(PANEL)
    columns = _columns(frame, tmp_path, rows_per_chunk)
    if rows_per_chunk:
        assert columns.table.column("y").num_chunks > 1
    read_back = load_panel(tmp_path)
    names = [c for c in frame.columns if c not in ("COUNTRY", "TIME")]
    by_frame, by_columns = country_grid(read_back, names), country_grid(columns, names)
    assert by_frame[:2] == by_columns[:2]
    assert by_frame[2].tobytes() == by_columns[2].tobytes()  # NaN where null, bit for bit
    assert grid_countries(read_back) == grid_countries(columns) == ["AA", "BB"]
    digest = shared_plan.panel_digest(columns)
    assert digest == shared_plan.panel_digest(read_back) == shared_plan.panel_digest(frame)


def test_the_digest_covers_every_value_name_and_country(tmp_path: Path) -> None:
    seen = {shared_plan.panel_digest(PANEL)}
    changed = [
        PANEL.assign(y=PANEL["y"].where(PANEL.index != 40, PANEL["y"] + 0.5)),
        PANEL.assign(COUNTRY=PANEL["COUNTRY"].replace("BB", "BC")),
        PANEL.assign(TIME=PANEL["TIME"].where(PANEL.index != 0, pd.Timestamp("2013-12-01"))),
        PANEL.rename(columns={"y": "z"}),
        PANEL.iloc[:-1],
    ]
    for i, frame in enumerate(changed):
        digest = shared_plan.panel_digest(_columns(frame, tmp_path / str(i)))
        assert digest == shared_plan.panel_digest(frame) and digest not in seen, i
        seen.add(digest)


def test_the_plan_from_columns_is_the_plan_from_the_frame(tmp_path: Path) -> None:
    """The same groups and keys; and in one run the stages share one plan whichever form
    they read (train the columns, assemble the frame)."""
    config = make_config(SMALL_STUDY)
    columns = _columns(PANEL, tmp_path)
    for model in ("ar_qr", "rw", "ensemble_nn"):  # per-country, and pooled
        adapter = adapter_for(config, model)
        for a, b in zip(
            build_groups(PANEL, config, adapter),
            build_groups(columns, config, adapter),
            strict=True,
        ):
            assert a.key_raw.tobytes() == b.key_raw.tobytes()
            assert a.countries.tolist() == b.countries.tolist()
            assert np.array_equal(a.origin, b.origin)
    adapter = adapter_for(config, "ar_qr")
    with shared_plan.one_plan_per_run():
        assert shared_plan.fit_groups(columns, config, adapter) is shared_plan.fit_groups(
            PANEL, config, adapter
        )


def _same(ours: pa.Array, theirs: pa.Array) -> None:
    """The same type, nulls and values (NaN equal to NaN)."""
    assert ours.type == theirs.type and ours.is_null().equals(theirs.is_null())
    assert (
        ours.to_numpy(zero_copy_only=False).tobytes()
        == theirs.to_numpy(zero_copy_only=False).tobytes()
    )


def test_numpy_and_arrow_convert_as_pyarrow_does() -> None:
    rng = np.random.default_rng(1)
    floats = rng.normal(size=50)
    floats[rng.random(50) < 0.3] = np.nan
    stamps = (np.arange(50) + 600).astype("datetime64[M]").astype("datetime64[ns]")
    stamps[::7] = np.datetime64("NaT")
    for values, kind in (
        (floats, pa.float64()),
        (stamps, pa.timestamp("ns")),
        (np.arange(50, dtype=np.int32), pa.int32()),
    ):
        for nan_is_null in (False, True):
            ours = arrow_columns.from_numpy(values, kind, nan_is_null=nan_is_null)
            _same(ours, pa.array(values, type=kind, from_pandas=nan_is_null))
        theirs = pa.array(values, type=kind, from_pandas=True)
        chunked = pa.chunked_array([theirs.slice(0, 13), theirs.slice(13, 30), theirs.slice(43)])
        for array in (theirs, theirs.slice(5, 20), chunked):
            got, want = arrow_columns.to_numpy(array), array.to_numpy(zero_copy_only=False)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    words = ["a", None, "ccc", "", "é"]
    assert arrow_columns.strings(words).equals(pa.array(words, type=pa.string()))
    assert arrow_columns.strings(words, large=True).equals(pa.array(words, pa.large_string()))
    schema = pa.schema([("t", pa.timestamp("ns")), ("s", pa.large_string()), ("x", pa.int64())])
    assert arrow_columns.empty_table(schema).equals(schema.empty_table())


def test_country_codes_are_np_unique() -> None:
    config = make_config(SMALL_STUDY)
    for model in ("ar_qr", "ensemble_nn"):  # per-country, then pooled
        for g in build_groups(PANEL, config, adapter_for(config, model)):
            names, codes = g.country_codes()
            want_names, want_codes = np.unique(g.countries.astype(str), return_inverse=True)
            assert names.tolist() == want_names.tolist() and names.dtype == object
            assert np.array_equal(codes, want_codes.reshape(-1))
    mixed = np.array([["b", "a"], ["a", "c"], ["b", "a"]], dtype=object)
    names, codes = sorted_codes(mixed)
    assert names.tolist() == ["a", "b", "c"] and codes.tolist() == [1, 0, 0, 2, 1, 0]


def test_months_and_labels_without_pandas_are_pandas() -> None:
    months = np.arange(month_index("1700-01-01"), month_index("2250-12-01"), 7)
    want = np.asarray(month_start(months).strftime("%Y-%m-%d"), dtype=object)
    assert origin_labels(months).tolist() == want.tolist()
    for text in ("2018-01-01", "2018-02-28", "1678-01-01", "2261-12-31", "2018-03", "Jan 2019"):
        stamp = pd.Timestamp(text)
        assert month_index(text) == stamp.year * 12 + stamp.month - 1, text
    assert month_index(pd.Timestamp("2020-05-17")) == 2020 * 12 + 4
    with pytest.raises(ValueError):
        month_index("2018-02-30")  # no such day: pandas' error, as before
