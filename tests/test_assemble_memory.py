"""assemble's driver memory (issue 18, ten million fits): the frame it holds is lean (its string
columns as categorical codes, written back as the schema's strings), and the steps that now work
on a mask of the frame's rows, not a copy of them, give the table of those rows bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_assemble import make_run

from pipeline.evaluation import coverage_tests as ct
from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation.crossing import crossing_rows
from pipeline.evaluation.grouping import Keys
from pipeline.schema import FORECAST_COLUMNS, FORECAST_DTYPES
from pipeline.stages.assemble_tables import arrow_table
from pipeline.stages.forecast_inputs import LEAN_COLUMNS, read_forecasts, schema_dtypes


@pytest.fixture(scope="module")
def forecasts(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("lean")
    make_run(root)
    return read_forecasts(root)


def test_the_frame_assemble_holds_is_lean(forecasts):
    # 8 numeric columns of 8 bytes and three small codes: a string column per row would be
    # ~10-17 bytes each (~103 B a row in all at a million fits)
    per_row = forecasts.memory_usage(deep=True, index=False).sum() / len(forecasts)
    assert per_row <= 8 * 8 + 3 * 2 + 1, per_row
    for column in LEAN_COLUMNS:
        categories = forecasts[column].cat.categories
        assert categories.is_monotonic_increasing and categories.dtype == "string"
        assert forecasts[column].notna().all()  # every category used
    # the schema's dtypes where the tables are written
    assert schema_dtypes(forecasts) == {
        c: pd.api.types.pandas_dtype(FORECAST_DTYPES[c]) for c in FORECAST_COLUMNS
    }
    strings = forecasts.astype({c: "string" for c in LEAN_COLUMNS})
    assert arrow_table(forecasts).equals(arrow_table(strings))
    assert arrow_table(forecasts).schema.field("MODEL").type == pa.large_string()


def test_a_lean_frame_gives_the_metric_tables_of_the_string_frame(forecasts):
    strings = forecasts.astype({c: "string" for c in LEAN_COLUMNS})
    lean = evaluate.metric_tables(forecasts, "ar_qr", key_dtypes=schema_dtypes(forecasts))
    plain = evaluate.metric_tables(strings, "ar_qr")
    assert lean.keys() == plain.keys()
    for name in plain:
        pd.testing.assert_frame_equal(lean[name], plain[name], check_exact=True, obj=name)


def _random_frame(seed: int) -> pd.DataFrame:
    """Forecasts of 3 models x 5 countries x 2 horizons x 3 levels x 40 origins, with crossed
    quantiles, null forecasts and actuals, in a shuffled row order."""
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product(
        [["a", "b", "c"], [f"C{i}" for i in range(5)], [1, 3], [0.1, 0.5, 0.9], range(40)],
        names=["MODEL", "COUNTRY", "HORIZON", "QUANTILE", "I"],
    ).to_frame(index=False)
    ends = pd.date_range("2019-01-01", periods=40, freq="MS")
    frame = idx.assign(
        WINDOW_END=ends[idx["I"]],
        TIME=ends[idx["I"]] + pd.to_timedelta(31 * idx["HORIZON"], unit="D"),
        FORECAST=rng.normal(size=len(idx)) + 1.3 * (idx["QUANTILE"] - 0.5),
        ACTUAL=rng.normal(size=len(idx)),
    ).drop(columns="I")
    frame.loc[rng.random(len(frame)) < 0.05, "FORECAST"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.1, "ACTUAL"] = np.nan
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return evaluate.compact_frame(frame.astype({"MODEL": "string", "COUNTRY": "string"}))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tests_and_crossing_on_a_mask_equal_those_of_the_copied_rows(seed):
    frame = _random_frame(seed)
    rng = np.random.default_rng(seed + 10)
    for where in (rng.random(len(frame)) < 0.7, np.ones(len(frame), bool)):
        part = frame.loc[where].reset_index(drop=True)
        keys = Keys(frame, dropna=False)
        for by in (["MODEL", "HORIZON", "QUANTILE"], ["MODEL", "COUNTRY", "HORIZON", "QUANTILE"]):
            masked = ct.coverage_tests(frame, by=by, keys=keys, where=where)
            copied = ct.coverage_tests(part, by=by)
            pd.testing.assert_frame_equal(masked, copied, check_exact=True)
        for by in (["MODEL", "HORIZON"], ["MODEL", "COUNTRY", "HORIZON"]):
            masked = crossing_rows(frame, by, Keys(frame), where)
            copied = evaluate.crossing_rate(part, by=by)
            pd.testing.assert_frame_equal(masked, copied, check_exact=True)
