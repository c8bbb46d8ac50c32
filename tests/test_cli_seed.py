"""The seed's command line: write-config, run --config FILE (+ overrides), --max-workers,
--write-config, --dry-run; and a data.path that is a directory of per-country files."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml
from builders import synthetic_settings
from conftest import ROOT

from pipeline.cli import main
from pipeline.data.synthetic import generate_panel
from pipeline.models.plugins import registry
from pipeline.schema import PANEL_FILE

SMALL = [
    "data.synthetic.n_countries=3",
    "data.horizons=[1]",
    "data.lags=[1]",
    "rolling_window.size=24",
    "rolling_window.start_date=2024-01-01",
    "rolling_window.end_date=2024-03-01",
    *registry.only("ar_qr", "rw", "climatology"),
]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_write_config_then_run_config_dry_run_with_and_without_override(tmp_path):
    config = tmp_path / "my_study.yaml"
    done = _cli("write-config", str(config), *SMALL, f"runtime.output_dir={tmp_path / 'a'}")
    assert done.returncode == 0, done.stderr
    done = _cli("run", "--config", str(config), "--max-workers", "1", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "cluster: 1 workers" in done.stdout and "ar_qr" in done.stdout
    assert "lqr" not in done.stdout  # the file's settings, not conf/'s defaults
    assert (tmp_path / "a" / PANEL_FILE).exists()
    # an override on top of the file: here another output dir and one more model
    done = _cli(
        "run",
        "--config",
        str(config),
        "--max-workers",
        "1",
        "--dry-run",
        f"runtime.output_dir={tmp_path / 'b'}",
        "models.lqr.enabled=true",
    )
    assert done.returncode == 0, done.stderr
    assert "lqr" in done.stdout and (tmp_path / "b" / PANEL_FILE).exists()


def test_run_write_config_records_flags_and_overrides(tmp_path, capsys):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    assert main(["write-config", str(first), *SMALL]) == 0
    argv = ["run", "--config", str(first), "--max-workers", "2", "--write-config", str(second)]
    assert main([*argv, "seed=7"]) == 0
    written = yaml.safe_load(second.read_text())
    expected = yaml.safe_load(first.read_text())
    expected["runtime"]["max_workers"], expected["seed"] = 2, 7
    assert written == expected
    assert not (tmp_path / "out").exists()  # written, not run
    # an existing file is kept
    assert main([*argv]) == 2 and "does not exist yet" in capsys.readouterr().err


def test_run_config_missing_file_is_one_line(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "--write-config FILE" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_per_country_directory_equals_one_panel_file(tmp_path, kind):
    frame = generate_panel(
        synthetic_settings(n_countries=3, start="2014-01-01", end="2019-12-01", seed=0)
    ).frame
    frame = frame[["TIME", "COUNTRY", "inflation", "core"]]
    panel_file = tmp_path / "panel.parquet"
    frame.to_parquet(panel_file)
    folder = tmp_path / "processed_per_country"
    folder.mkdir()
    for country, part in frame.groupby("COUNTRY"):
        part = part.drop(columns="COUNTRY")
        if kind == "csv":
            part.assign(TIME=part.TIME.dt.strftime("%Y-%m")).to_csv(
                folder / f"{country}.csv", index=False
            )
        else:
            part.to_parquet(folder / f"{country}.parquet")
    common = [
        "run",
        "--dry-run",
        "data.source=panel",
        "data.target=inflation",
        "data.features=[core]",
        "data.horizons=[1]",
        "data.lags=[1]",
        "rolling_window.size=24",
        "rolling_window.start_date=2019-01-01",
        "rolling_window.end_date=2019-06-01",
        "models.ar_qr.p=2",
        *registry.only("ar_qr", "rw", "climatology"),
    ]
    outs = {}
    for name, path in (("file", panel_file), ("dir", folder)):
        outs[name] = tmp_path / name
        assert main([*common, f"data.path={path}", f"runtime.output_dir={outs[name]}"]) == 0
    from_dir = pd.read_parquet(outs["dir"] / PANEL_FILE)
    assert sorted(from_dir.COUNTRY.unique()) == ["C01", "C02", "C03"]
    pd.testing.assert_frame_equal(from_dir, pd.read_parquet(outs["file"] / PANEL_FILE))


def test_per_country_files_with_different_columns(tmp_path, capsys):
    folder = tmp_path / "countries"
    folder.mkdir()
    (folder / "AT.csv").write_text("TIME,inflation\n2020-01,1.0\n")
    (folder / "DE.csv").write_text("TIME,infl\n2020-01,1.0\n")
    argv = ["run", "data.source=panel", f"data.path={folder}", "data.target=inflation"]
    assert main([*argv, f"runtime.output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "DE.csv has columns ['TIME', 'infl']" in err and "same columns" in err
