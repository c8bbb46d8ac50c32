"""pipeline.backtest: the command line's study from Python, with its result returned.

One real run on a caller's DataFrame (`data=`): the Result is what the run wrote (forecast
table with ACTUAL, metrics.json), the frame's values are what was forecast, and a second call
resumes from the fit cache (no fit is written again). Bad input raises the command line's one
line as a QpipeError, before anything is written.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from builders import synthetic_settings
from conftest import tiny_study

import pipeline
from pipeline.data.synthetic import generate_panel
from pipeline.errors import ConfigError, OutputError, RunFailed
from pipeline.models.plugins import registry
from pipeline.runtime.store.run_lock import OutputDirBusy, RunLock


def synthetic_frame(n_countries: int = 3) -> pd.DataFrame:
    """The seeded synthetic panel as a caller would hold it, under a column name of its own."""
    frame = generate_panel(synthetic_settings(n_countries=n_countries)).frame
    return frame.rename(columns={"inflation": "hicp"})


@pytest.mark.slow
def test_backtest_on_a_dataframe_returns_what_it_wrote_and_resumes(tmp_path):
    frame = synthetic_frame()
    overrides = tiny_study(f"runtime.output_dir={tmp_path / 'out'}", "data.target=hicp")
    result = pipeline.backtest(overrides, data=frame)

    assert result.output_dir == (tmp_path / "out").resolve()
    on_disk = pd.read_parquet(result.output_dir / "forecasts" / "all.parquet")
    pd.testing.assert_frame_equal(result.forecasts, on_disk, check_dtype=False)
    assert result.metrics == json.loads((result.output_dir / "metrics.json").read_text())
    assert {"ACTUAL", "FORECAST", "QUANTILE", "HORIZON", "MODEL"} <= set(result.forecasts)
    assert set(result.forecasts["MODEL"]) >= {"ar_qr", "lqr"}
    # the actuals are the caller's values
    scored = result.forecasts.dropna(subset=["ACTUAL"]).iloc[0]
    row = frame[(frame.COUNTRY == scored.COUNTRY) & (frame.TIME == scored.TIME)]
    assert row["hicp"].item() == pytest.approx(scored.ACTUAL)
    used = yaml.safe_load((result.output_dir / "config.yaml").read_text())["data"]
    assert used["source"] == "panel" and used["path"].endswith("input/panel.parquet")

    fits = sorted((result.output_dir / "models").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in fits if p.is_file()}
    again = pipeline.backtest(overrides, data=frame)  # resume: every fit comes from the cache
    pd.testing.assert_frame_equal(again.forecasts, result.forecasts)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_bad_input_raises_the_one_line_as_a_qpipe_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(pipeline.QpipeError, match=r"config error at 'models.ar_qr.p'"):
        pipeline.backtest(["models.ar_qr.p=0", f"runtime.output_dir={out}"])
    with pytest.raises(ConfigError, match="a list of strings"):
        pipeline.backtest("models.ar_qr.p=2")  # type: ignore[arg-type]
    with pytest.raises(pipeline.QpipeError, match="no COUNTRY column"):
        pipeline.backtest([f"runtime.output_dir={out}"], data=pd.DataFrame({"TIME": ["2020-01"]}))
    with pytest.raises(pipeline.QpipeError, match="must be a pandas DataFrame"):
        pipeline.backtest([f"runtime.output_dir={out}"], data={"TIME": []})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--config"):
        pipeline.backtest(config=tmp_path / "missing.yaml")
    assert not out.exists()  # nothing was written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot be written"):
        pipeline.backtest([f"runtime.output_dir={blocker / 'out'}"])
    out.mkdir()
    with RunLock(out), pytest.raises(OutputDirBusy):  # one run per output dir
        pipeline.backtest(tiny_study(f"runtime.output_dir={out}"))
    assert issubclass(OutputDirBusy, pipeline.QpipeError)


# a user model (batched function) that fails on a constant series: the caller's frame decides
# which fits fail (the country sorted last). The user-model check (the first two fits) passes;
# the probe's task reaches the failing fits (a fast model: it times a whole task), and a failure
# there is timed and left to train to record, not a crash of the run.
FAILS_ON_CONSTANT = """
import numpy as np


def fit_batch(X, y, w, X_new, quantiles):
    out = np.empty((X.shape[0], X_new.shape[1], len(quantiles)))
    for b in range(X.shape[0]):
        live = y[b][w[b] > 0]
        if np.ptp(live) == 0:
            raise ValueError("a constant series has no quantiles to learn")
        out[b] = X_new[b][:, [0]] + np.quantile(live - X[b][w[b] > 0, 0], quantiles)
    return out
"""


@pytest.mark.slow
def test_a_run_with_failed_fits_raises_run_failed_carrying_what_it_wrote(tmp_path):
    frame = synthetic_frame(2)
    flat = frame[frame.COUNTRY == "C01"].assign(COUNTRY="ZZ", hicp=7.0)
    frame = pd.concat([frame, flat], ignore_index=True)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "um_flat.py").write_text(FAILS_ON_CONSTANT)
    out = tmp_path / "out"
    overrides = tiny_study(
        f"runtime.output_dir={out}",
        "data.target=hicp",
        *registry.only("ar_qr"),
        "+models.flat._target_=um_flat.fit_batch",
        f"+models.flat.python_path={tmp_path / 'code'}",
    )
    with pytest.raises(RunFailed, match="some fits failed") as info:
        pipeline.backtest(overrides, data=frame)

    assert isinstance(info.value, pipeline.QpipeError)  # one base class for the caller
    result = info.value.result
    assert isinstance(result, pipeline.Result) and result.output_dir == out.resolve()
    on_disk = pd.read_parquet(out / "forecasts" / "all.parquet")
    pd.testing.assert_frame_equal(result.forecasts, on_disk, check_dtype=False)
    assert result.metrics == json.loads((out / "metrics.json").read_text())
    # exactly the constant country's fits of the user model failed; everything else is there
    missing = pd.read_parquet(out / "forecasts" / "missing.parquet")
    assert set(missing["MODEL"]) == {"flat"} and set(missing["COUNTRY"]) == {"ZZ"}
    flat_rows = result.forecasts[result.forecasts.MODEL == "flat"]
    assert len(flat_rows) and "ZZ" not in set(flat_rows.COUNTRY)
    assert set(result.forecasts[result.forecasts.MODEL == "ar_qr"].COUNTRY) == {"C01", "C02", "ZZ"}
