"""assemble's inputs and metric steps on integer codes (issue 18, a million fits): the coded
paths give what the string paths gave, and bad inputs are still caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_assemble import make_run
from test_coverage_tests import _frame as coverage_frame

from pipeline.evaluation import coverage_tests as ct
from pipeline.evaluation import metrics as evaluate
from pipeline.io import write_parquet
from pipeline.stages.forecast_inputs import FIT_KEY, read_forecasts, reconcile


@pytest.fixture(scope="module")
def forecasts(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("inputs")
    make_run(root)
    return read_forecasts(root)


def test_reconcile_gives_the_same_answer_for_coded_and_string_expected_fits(forecasts):
    key = list(FIT_KEY)
    expected = forecasts[key].iloc[3:].copy()  # the first three fits: in train, not expected
    extra = forecasts[key].drop_duplicates("QUANTILE").iloc[:2]  # two fits absent from train
    extra = extra.assign(WINDOW_END=pd.Timestamp("2030-01-01"))
    expected = pd.concat([expected, extra, extra.iloc[:1]], ignore_index=True)  # one repeated
    # a level from another float path still matches
    expected["QUANTILE"] = expected["QUANTILE"] + 1e-13
    frame = forecasts.copy()
    frame.loc[5, "FORECAST"] = np.nan  # a null forecast: missing, "no forecast"
    coded = expected.astype({"MODEL": "category", "COUNTRY": "category"})  # as expected_fits
    results = [reconcile(frame, e) for e in (expected, coded)]
    for kept, missing, n_unexpected in results:
        assert n_unexpected == 3
        assert len(kept) == len(frame) - 3
        assert missing["REASON"].tolist() == ["no forecast", "absent", "absent"]
        assert missing["MODEL"].dtype == "string" and missing["COUNTRY"].dtype == "string"
    pd.testing.assert_frame_equal(results[0][0], results[1][0])
    pd.testing.assert_frame_equal(results[0][1], results[1][1])
    absent = results[0][1].query("REASON == 'absent'")
    assert set(absent["WINDOW_END"]) == {pd.Timestamp("2030-01-01")}


def test_repeated_fits_and_repeated_panel_months_are_refused(tmp_path):
    root = tmp_path / "shards"
    make_run(root, models=("ar_qr",))
    shard = pd.read_parquet(root / "train/ar_qr.parquet")
    write_parquet(root / "train/ar_qr.parquet", pd.concat([shard, shard.iloc[:1]]))
    with pytest.raises(ValueError, match="2 rows repeat"):
        read_forecasts(root)

    root = tmp_path / "panel"
    make_run(root, models=("ar_qr",))
    panel = pd.read_parquet(root / "data/prepared/panel.parquet")
    row = panel.loc[(panel["COUNTRY"] == "AT") & (panel["TIME"] == "2019-06-01")]
    write_parquet(root / "data/prepared/panel.parquet", pd.concat([panel, row]))
    with pytest.raises(ValueError, match=r"rows repeat.*'AT'"):
        read_forecasts(root)


def test_actuals_are_missing_where_the_panel_has_no_such_country_or_month(tmp_path):
    make_run(tmp_path, models=("ar_qr",))
    panel = pd.read_parquet(tmp_path / "data/prepared/panel.parquet")
    write_parquet(tmp_path / "data/prepared/panel.parquet", panel[panel["COUNTRY"] != "DE"])
    frame = read_forecasts(tmp_path)
    assert frame.loc[frame["COUNTRY"] == "DE", "ACTUAL"].isna().all()
    at = frame.loc[frame["COUNTRY"] == "AT"]
    assert at["ACTUAL"].notna().any() and at.loc[at["TIME"] > "2021-06-01", "ACTUAL"].isna().all()
    keys = frame[list(FIT_KEY)]
    assert keys.equals(keys.sort_values(list(FIT_KEY), kind="stable"))  # sorted by the key


def test_metric_tables_on_a_compact_frame_equal_those_on_strings(forecasts):
    frame = pd.concat(
        [forecasts, forecasts.query("MODEL == 'lqr'").assign(MODEL="zz")], ignore_index=True
    )
    plain = evaluate.metric_tables(frame, "ar_qr")
    compact = evaluate.compact_frame(frame)
    assert isinstance(compact["COUNTRY"].dtype, pd.CategoricalDtype)
    coded = evaluate.metric_tables(compact, "ar_qr", key_dtypes=frame.dtypes)
    assert plain.keys() == coded.keys()
    for name, table in plain.items():
        pd.testing.assert_frame_equal(table, coded[name], check_exact=True, obj=name)


def test_dq_statistics_do_not_depend_on_the_batch_size(monkeypatch):
    frame = coverage_frame(np.random.default_rng(3))
    by = ["MODEL", "COUNTRY", "HORIZON", "QUANTILE"]
    whole = ct.coverage_tests(frame, by=by)
    monkeypatch.setattr(ct, "DQ_BATCH_BYTES", 1)  # one group's design per SVD
    pd.testing.assert_frame_equal(ct.coverage_tests(frame, by=by), whole, check_exact=True)
    coded = frame.astype({"MODEL": "category", "COUNTRY": "category"})
    pd.testing.assert_frame_equal(ct.coverage_tests(coded, by=by), whole, check_exact=True)


def test_shards_in_any_row_order_give_the_same_sorted_frame(tmp_path):
    """Train writes its rows sorted (nothing moves then); a shard in another order is sorted."""
    make_run(tmp_path)
    want = read_forecasts(tmp_path)
    path = sorted((tmp_path / "train").glob("*.parquet"))[-1]
    shard = pd.read_parquet(path)
    write_parquet(path, shard.sample(frac=1.0, random_state=0))
    got = read_forecasts(tmp_path)
    pd.testing.assert_frame_equal(got, want)
    keys = got[list(FIT_KEY)]
    assert keys.equals(keys.sort_values(list(FIT_KEY), kind="stable"))
