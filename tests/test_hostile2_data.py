"""Data files that look right but are not what a monthly study assumes, through the command
line (`python -m pipeline run`, in-process): a semicolon or tab separated CSV, a row dated in
the future (exit 2, one line, nothing written), and quarterly data or a long gap (the run goes
on; prepare says once what data.missing does with them)."""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, SMALL_STUDY, make_config
from panel_cli import panel_frame, run_args

from pipeline.cli import main
from pipeline.data.errors import DataError
from pipeline.data.spacing import check_not_future, spacing_warnings


def _refused(capsys: pytest.CaptureFixture[str], data: Path, out: Path) -> str:
    assert main(run_args(data, out)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists()  # nothing was created for a refused start
    return lines[0]


@pytest.mark.parametrize(
    ("sep", "decimal", "needles"),
    [
        (";", ",", ("semicolons (;)", "Excel", "sep=';', decimal=','")),
        (";", ".", ("semicolons (;)", "sep=';'")),  # was "no TIME column"
        ("\t", ".", ("tabs, not commas", "sep='\\t'")),
    ],
    ids=["semicolon-decimal-comma", "semicolon", "tab"],
)
def test_a_csv_separated_otherwise_names_its_separator_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sep: str, decimal: str, needles: tuple
) -> None:
    path = tmp_path / "panel.csv"
    panel_frame().to_csv(path, sep=sep, decimal=decimal, index=False, encoding="utf-8-sig")
    line = _refused(capsys, path, tmp_path / "out")
    assert str(path) in line and "not commas" in line
    for needle in needles:
        assert needle in line, (needle, line)


def test_a_row_dated_in_the_future_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stray = pd.DataFrame({"TIME": ["2099-01"], "COUNTRY": ["C02"], "inflation": [1.5]})
    path = tmp_path / "panel.csv"
    pd.concat([panel_frame(), stray]).to_csv(path, index=False)
    line = _refused(capsys, path, tmp_path / "out")
    assert "1 value of inflation dated after this month" in line
    assert "['C02 2099-01']" in line and "fix their TIME" in line


def test_the_future_is_this_month_s_end() -> None:
    frame = pd.DataFrame(
        {
            "TIME": pd.to_datetime(["2026-11-01", "2026-12-01", "2027-01-01", "2027-02-01"]),
            "COUNTRY": ["A", "A", "A", "B"],
            "inflation": [1.0, 2.0, 3.0, None],  # an empty future cell is harmless
        }
    )
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    check_not_future(frame.iloc[:2], "inflation", "f", now)
    check_not_future(frame.iloc[[0, 1, 3]], "inflation", "f", now)
    with pytest.raises(
        DataError, match=r"f: 1 value of inflation .* \(2026-12\), e.g. \['A 2027-01'\]"
    ):
        check_not_future(frame, "inflation", "f", now)


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(TIME=pd.to_datetime(frame["TIME"]))


def test_quarterly_data_and_long_gaps_are_one_line_each() -> None:
    frame = _tidy(panel_frame())
    month = frame["TIME"].dt.month
    assert spacing_warnings(frame, "inflation", "forward_fill_then_mean") == []
    quarterly = frame[(frame["COUNTRY"] == "C01") | (month % 3 == 0)]
    (line,) = spacing_warnings(quarterly, "inflation", "forward_fill_then_mean")
    assert line.startswith("C02 (and 1 more: C03) has a value of inflation only every 3 months")
    assert "forward_fill_then_mean repeats the last value" in line
    # a year and a half missing in one country, a month here and there in another
    gaps = frame.drop(frame.index[(frame["COUNTRY"] == "C03")][20:38]).drop(frame.index[[5, 9]])
    (line,) = spacing_warnings(gaps.sample(frac=1, random_state=0), "inflation", "drop")
    assert line.startswith("C03 has no value of inflation for 18 months, from 2015-09 to 2017-02;")
    assert "data.missing=drop skips every fit" in line


def test_prepare_tells_once_that_quarterly_data_is_filled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.stages.prepare import build_prepared

    frame = panel_frame()
    month = pd.PeriodIndex(frame["TIME"], freq="M").month
    path = tmp_path / "panel.csv"
    frame[(frame["COUNTRY"] != "C02") | (month % 3 == 0)].to_csv(path, index=False)
    d = copy.deepcopy(SMALL_STUDY)
    d["data"].update({"source": "panel", "path": str(path), "target": "inflation"})
    d["runtime"]["output_dir"] = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        panel, _ = build_prepared(make_config(d), ROOT)
    lines = [r.getMessage() for r in caplog.records if "quarterly" in r.getMessage()]
    assert lines == [
        "prepare: C02 has a value of inflation only every 3 months (quarterly data?); "
        "data.missing=forward_fill_then_mean repeats the last value through the months "
        "between (the documented policy): give monthly values if that is not what you want"
    ]
    assert panel["y"].notna().all()  # the policy is kept: every month of C02 filled
