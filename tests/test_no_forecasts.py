"""A study in which no fit produced a forecast (every fit failed): assemble says so plainly,
names where the errors are, exits 1 at the command line and writes or removes nothing.

Before this fix assemble got as far as choosing the fan charts and raised a ConfigError at
`evaluation.fan_countries` ("expected countries with forecasts []"), exit 2, as if the config
were wrong."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from builders import keeping
from conftest import SMALL_STUDY, make_config, prepared_rw_study
from test_task_limits import plan

from pipeline.cli import main
from pipeline.errors import NoForecasts, RunFailed
from pipeline.stages.assemble import assemble
from pipeline.stages.failed_fits import read_failed_fits
from pipeline.stages.train import run_train


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def every_fit_failed(tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The small study's output dir after fake_fail failed every fit of every country."""
    monkeypatch.setenv("FAKE_FAIL_COUNTRIES", "C01,C02,C03,C04")
    config = prepared_rw_study(tmp_path)
    summary = run_train(config, "fake_fail", plan("fake_fail", 8, seconds_per_fit=0.001))
    assert summary.failed == summary.fits > 0
    return config.output_dir


def test_assemble_says_no_fit_succeeded_and_where_the_errors_are(every_fit_failed: Path) -> None:
    out = every_fit_failed
    expected = read_failed_fits(out)  # fake_fail's fits: the ones this study asked for
    assert expected is not None and len(expected) == 288
    before = files_under(out)
    with pytest.raises(NoForecasts) as info:
        assemble(out, "y", expected=expected, fan_countries=["C01", "C02"])
    message = str(info.value)
    assert isinstance(info.value, RunFailed)  # exit 1 and pipeline.backtest's error
    assert (
        "no fit produced a forecast" in message and "288 forecasts expected: 288 failed" in message
    )
    assert str(out / "progress" / "errors.parquet") in message and "qpipe monitor" in message
    assert "fan_countries" not in message and "\n" not in message
    assert (out / "progress" / "errors.parquet").exists()
    assert files_under(out) == before  # nothing written, nothing removed


def test_the_command_line_exits_1_with_one_line(
    every_fit_failed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`qpipe stage assemble` (what `dvc repro` runs) on the same output dir: its rw fits
    were never trained."""
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(every_fit_failed)
    d["models"] = keeping(d["models"], "rw")
    params = yaml.safe_dump(make_config(d).to_dict(), sort_keys=False)
    (tmp_path / "params.yaml").write_text(params)
    monkeypatch.chdir(tmp_path)
    errors = (every_fit_failed / "progress" / "errors.parquet").read_bytes()
    assert main(["stage", "assemble"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no fit produced a forecast")
    assert "(288 forecasts expected: 288 absent)" in err[0]
    assert (every_fit_failed / "progress" / "errors.parquet").read_bytes() == errors
    assert not (every_fit_failed / "forecasts").exists()
