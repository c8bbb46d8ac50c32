"""One clear error for each bad input, through the real command line (`python -m pipeline run`).

Each case: exit code 2, one line naming the file/column/countries/values and the fix, no
traceback on the terminal (it goes to the error log the line names, in the system temp dir),
and an output dir that already holds an earlier run's files is left exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT
from panel_cli import panel_frame, run_args

from pipeline.cli import main
from pipeline.io import read_json
from pipeline.models.plugins import registry
from pipeline.schema import META_FILE

COUNTRIES = ("C01", "C02", "C03")


def _good_frame() -> pd.DataFrame:
    frame = panel_frame()
    frame["inflation"] = frame["inflation"].astype(str)
    return frame


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    """run_args with a small ar_qr and the benchmarks rw and climatology."""
    models = ("models.ar_qr.p=2", *registry.only("ar_qr", "rw", "climatology"))
    return run_args(data, out, *models, *extra)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file and folder under `folder`, with the bytes of each file."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """An output dir holding an earlier run's files, which a failed start must not touch."""
    out = tmp_path / "out"
    (out / "data" / "prepared").mkdir(parents=True)
    (out / "data" / "prepared" / "panel.parquet").write_bytes(b"earlier panel")
    (out / "data" / "prepared" / "meta.json").write_text('{"earlier": 1}\n')  # as prepare writes
    (out / "metrics.json").write_text('{"earlier": 1}\n')
    return out


def _expect_bad_input(capsys, argv: list[str], out: Path, *needles: str) -> str:
    before = _snapshot(out)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert _snapshot(out) == before
    log = Path(lines[0].rsplit("(details: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()  # the traceback is kept, in the log
    return lines[0]


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "panel.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_empty_file(tmp_path, earlier_run, capsys):
    path = tmp_path / "panel.csv"
    path.write_text("")
    _expect_bad_input(capsys, _args(path, earlier_run), earlier_run, str(path), "is empty")


def test_header_only(tmp_path, earlier_run, capsys):
    path = tmp_path / "panel.csv"
    path.write_text("TIME,COUNTRY,inflation\n")
    _expect_bad_input(capsys, _args(path, earlier_run), earlier_run, str(path), "no data rows")


def test_whole_column_not_numeric(tmp_path, earlier_run, capsys):
    frame = _good_frame()
    frame["inflation"] = "high"
    path = _write(tmp_path, frame)
    line = _expect_bad_input(
        capsys, _args(path, earlier_run), earlier_run, str(path), "'inflation'", "non-numeric"
    )
    assert (
        "has 216 non-numeric values (per country: C01 72, C02 72, C03 72;" in line
        and "data.non_numeric=coerce" in line
    )


@pytest.mark.parametrize("bad", ["n/a", "1,5"])
def test_non_numeric_value_is_an_error(tmp_path, earlier_run, capsys, bad):
    frame = _good_frame()
    frame.loc[10, "inflation"] = bad
    path = _write(tmp_path, frame)
    line = _expect_bad_input(
        capsys, _args(path, earlier_run), earlier_run, str(path), "'inflation'", repr(bad)
    )
    assert "1 non-numeric values (per country: C01 1;" in line


def test_non_numeric_coerce_warns_with_counts(tmp_path, caplog):
    frame = _good_frame()
    frame.loc[[10, 11], "inflation"] = "n/a"
    frame.loc[frame.COUNTRY == "C02", "inflation"] = frame.loc[
        frame.COUNTRY == "C02", "inflation"
    ].str.replace(".", ",", regex=False)  # a country written with comma decimals
    path = _write(tmp_path, frame)
    out = tmp_path / "coerced"
    assert main([*_args(path, out, "data.non_numeric=coerce"), "--dry-run"]) == 0
    err = caplog.text
    assert "non-numeric values read as missing" in err and "C01 2, C02 " in err
    meta = read_json(out / META_FILE)
    assert meta["countries"] == ["C01", "C03"]
    assert "no usable value of inflation" in meta["skipped"]["C02"]
    assert "skipped C02: no usable value" in err


def test_comma_decimal_country_named_in_countries(tmp_path, earlier_run, capsys):
    frame = _good_frame()
    c02 = frame.COUNTRY == "C02"
    frame.loc[c02, "inflation"] = frame.loc[c02, "inflation"].str.replace(".", ",", regex=False)
    path = _write(tmp_path, frame)
    argv = _args(path, earlier_run, "data.non_numeric=coerce", "data.countries=[C01,C02]")
    _expect_bad_input(capsys, argv, earlier_run, "data.countries names ['C02']", "no usable value")


def test_country_without_values(tmp_path, earlier_run, capsys, caplog):
    frame = _good_frame()
    frame.loc[frame.COUNTRY == "C03", "inflation"] = ""
    path = _write(tmp_path, frame)
    out = tmp_path / "dropped"
    assert main([*_args(path, out), "--dry-run"]) == 0
    assert "no usable value" in read_json(out / META_FILE)["skipped"]["C03"]
    assert "skipped C03: no usable value" in caplog.text
    argv = _args(path, earlier_run, "data.countries=[C01,C03]")
    _expect_bad_input(capsys, argv, earlier_run, "data.countries names ['C03']", "fix their data")


def test_infinite_value(tmp_path, earlier_run, capsys):
    frame = _good_frame()
    frame.loc[5, "inflation"] = "inf"
    path = _write(tmp_path, frame)
    _expect_bad_input(capsys, _args(path, earlier_run), earlier_run, "'inf'", "non-numeric")


def test_implausible_value(tmp_path, earlier_run, capsys):
    frame = _good_frame()
    frame.loc[7, "inflation"] = "1e12"
    path = _write(tmp_path, frame)
    line = _expect_bad_input(
        capsys, _args(path, earlier_run), earlier_run, "|value| > 1000", "data.max_abs_value"
    )
    assert "C01 2014-08: '1e12'" in line
    ok = tmp_path / "bound_off"  # the bound is configurable
    assert main([*_args(path, ok, "data.max_abs_value=null"), "--dry-run"]) == 0


def test_truncated_parquet(tmp_path, earlier_run, capsys):
    frame = _good_frame()
    frame["inflation"] = frame["inflation"].astype(float)
    path = tmp_path / "panel.parquet"
    frame.to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _expect_bad_input(
        capsys, _args(path, earlier_run), earlier_run, str(path), "not a readable parquet"
    )


def test_output_dir_is_a_file_or_under_one(tmp_path, capsys):
    path = _write(tmp_path, _good_frame())
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "out"):
        _expect_bad_input(capsys, _args(path, out), tmp_path / "none", "runtime.output_dir")
        assert blocker.read_text() == "keep me"


def _cli(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*kwargs.pop("prefix", []), sys.executable, "-m", "pipeline", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_output_dir_not_writable_real_cli(tmp_path, earlier_run):
    """Root ignores modes; dropping CAP_DAC_OVERRIDE makes the mode count (as for any user)."""
    # util-linux ships setpriv on every Debian image (here and in CI): its absence is a failure
    assert shutil.which("setpriv"), "setpriv (util-linux) is missing: apt-get install util-linux"
    path = _write(tmp_path, _good_frame())
    before = _snapshot(earlier_run)
    earlier_run.chmod(0o555)
    caps = "-dac_override,-dac_read_search"
    try:
        done = _cli(
            _args(path, earlier_run),
            prefix=["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"],
        )
    finally:
        earlier_run.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "runtime.output_dir" in done.stderr and "Permission denied" in done.stderr
    assert _snapshot(earlier_run) == before


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs filled to the last byte (root: mount works here and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)])
    # the suite runs as root here and in CI: a failed mount is a failure, not a skip
    assert done.returncode == 0, "cannot mount a tmpfs: this test needs root (as in CI)"
    try:
        (mount / "out").mkdir()
        (mount / "out" / "metrics.json").write_text('{"earlier": 1}\n')
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount / "out"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_real_cli(tmp_path, full_disk):
    path = _write(tmp_path, _good_frame())
    before = _snapshot(full_disk)
    done = _cli(_args(path, full_disk))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr
    assert _snapshot(full_disk) == before


def test_mid_run_write_failure_is_one_line(tmp_path, monkeypatch, capsys):
    """A disk that fills after the start check: one line, exit 2, no chained tracebacks."""
    import errno

    import pipeline.stages.prepare as prepare_module

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.parquet"))

    monkeypatch.setattr(prepare_module, "write_parquet", no_space)
    path = _write(tmp_path, _good_frame())
    out = tmp_path / "out"
    _expect_bad_input(capsys, _args(path, out), out, "No space left on device", "x.parquet")
