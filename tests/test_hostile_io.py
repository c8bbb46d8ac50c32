"""Hostile conditions around files (issue 22): an error log no one can redirect, system dirs
refused, damaged or odd state that heals or fails in one line instead of a traceback."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from conftest import tiny_study

from pipeline.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _log_of(line: str) -> Path:
    return Path(line.rsplit("(details: ", 1)[1].rstrip(")"))


def test_error_log_never_follows_a_symlink_planted_at_a_predictable_name(tmp_path, capsys):
    """Another user pre-creates `qpipe-error-<UTC second>-<pid>.log` links to a victim file."""
    import tempfile

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    now = time.time()
    planted = []
    for second in range(-2, 30):  # the names the old code would pick in the next half minute
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + second))
        link = Path(tempfile.gettempdir()) / f"qpipe-error-{stamp}-{os.getpid()}.log"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(victim)
            planted.append(link)
    try:
        assert main(["run", "rolling_window.size=1", f"runtime.output_dir={tmp_path / 'o'}"]) == 2
        log = _log_of(_error_line(capsys))
    finally:
        for link in planted:
            link.unlink()
    assert victim.read_text() == "precious\n"
    assert not log.is_symlink() and log not in planted
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "Traceback" in log.read_text()
    log.unlink()


@pytest.mark.parametrize("out", ["/", "/etc", "/usr/lib/qpipe-study", "/proc/self"])
def test_a_system_dir_as_output_dir_exits_2_before_anything_is_written(out, capsys, monkeypatch):
    from pipeline.runtime.store.run_lock import RunLock

    def must_not_start(self):  # a regression fails here instead of writing a study into /etc
        raise AssertionError(f"a run started in {self.output_dir}")

    monkeypatch.setattr(RunLock, "__enter__", must_not_start)
    before = sorted(os.listdir("/")) + sorted(os.listdir("/etc"))
    assert main(["run", *tiny_study(), f"runtime.output_dir={out}"]) == 2
    line = _error_line(capsys)
    assert "system directory" in line and "runtime.output_dir" in line
    assert sorted(os.listdir("/")) + sorted(os.listdir("/etc")) == before
    assert not Path("/usr/lib/qpipe-study").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("rolling_window.size=100000", "rolling_window.size"),
        ("models.ensemble_nn.parallel_models=100000", "models.ensemble_nn.parallel_models"),
    ],
)
def test_huge_sizes_are_one_line_config_errors(tmp_path, capsys, override, key):
    out = tmp_path / "out"
    assert main(["run", *tiny_study(), override, f"runtime.output_dir={out}"]) == 2
    assert key in _error_line(capsys)
    assert not out.exists()


def test_a_dangling_output_dir_symlink_is_one_line(tmp_path, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    assert main(["run", *tiny_study(), f"runtime.output_dir={link}"]) == 2
    line = _error_line(capsys)
    assert "symlink" in line and str(tmp_path / "gone") in line
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_a_truncated_timings_file_heals(tmp_path, capsys):
    from pipeline.runtime.store.timings import read_timings

    out = tmp_path / "out"
    argv = ["run", *tiny_study(), f"runtime.output_dir={out}"]
    assert main(argv) == 0, capsys.readouterr()
    (out / "logs" / "timings.json").write_text('{"prepare": {"seconds": 0.1')  # torn write
    assert main(argv) == 0, capsys.readouterr()
    timings = json.loads((out / "logs" / "timings.json").read_text())
    # the rerun is a no-op (every stage skipped, the probe not even needed), yet it records
    # its stages in a rebuilt, readable file
    assert {"prepare", "assemble"} <= set(timings)
    assert read_timings(out) == timings


def test_a_full_disk_under_sqlite_is_the_disk_full_message(tmp_path, capsys, monkeypatch):
    """SQLITE_FULL (a real one: the store may not grow past its size) is one line, exit 2."""
    from pipeline.runtime.store.progress import ProgressStore

    start_run = ProgressStore.start_run

    def fill_up(self, *args, **kwargs):
        (pages,) = self.conn.execute("PRAGMA page_count").fetchone()
        self.conn.execute(f"PRAGMA max_page_count = {pages}")
        return start_run(self, *args, **kwargs)

    monkeypatch.setattr(ProgressStore, "start_run", fill_up)
    out = tmp_path / "out"
    # 144 fits: their plan (32-byte keys, forecasts) outgrows the store's first pages
    study = tiny_study("data.synthetic.n_countries=24")
    assert main(["run", *study, f"runtime.output_dir={out}"]) == 2
    line = _error_line(capsys)
    assert "database or disk is full" in line and "free disk space" in line
    assert not (out / "progress" / "damaged").exists()  # a full disk is not a damaged store


def _cli_bounded(argv: list[str], seconds: float) -> tuple[int, str, float, float]:
    """Run the CLI in a child: (exit code, stderr, wall seconds, peak RSS in MB via os.wait4).

    A child still running after `seconds` is killed (and reported as rc -9), so a hang fails
    the test instead of stalling the suite.
    """
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > seconds:
            child.kill()
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.05)
    wall = time.monotonic() - start
    err = child.stderr.read().decode()
    child.stderr.close()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return child.returncode, err, wall, usage.ru_maxrss / 1024


@pytest.fixture
def junk_gigabyte(tmp_path: Path):
    """1 GiB 'CSV' with a valid header: 600k rows of junk values, then a sparse hole (NULs)."""
    path = tmp_path / "junk.csv"
    with open(path, "wb") as handle:
        handle.write(b"TIME,COUNTRY,inflation\n" + b"2019-01,C01,abc\n" * 600_000)
        handle.truncate(2**30)
    yield path
    path.unlink()


def test_hostile_data_paths_exit_2_within_seconds_and_bounded_memory(tmp_path, junk_gigabyte):
    """/dev/zero, a FIFO without a writer and a 1 GB junk file (over data.max_file_mb, and
    under a raised limit where the values are checked as the file streams): each one line,
    exit 2, within 10 s and 1 GB of peak memory."""
    fifo = tmp_path / "panel.csv"
    os.mkfifo(fifo)
    cases = [
        ([f"data.path={Path('/dev/zero')}"], "character device"),
        ([f"data.path={fifo}"], "FIFO"),
        ([f"data.path={junk_gigabyte}"], "data.max_file_mb"),
        ([f"data.path={junk_gigabyte}", "data.max_file_mb=4096"], "non-numeric values"),
    ]
    out = tmp_path / "out"
    for extra, needle in cases:
        argv = ["run", *tiny_study(), "data.source=panel", "data.target=inflation", *extra]
        rc, err, wall, peak_mb = _cli_bounded([*argv, f"runtime.output_dir={out}"], 30)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], (extra, rc, err[-2000:])
        assert "Traceback" not in err
        assert wall < 10, (extra, wall)
        assert peak_mb < 1024, (extra, peak_mb)
        assert not (out / "data").exists()  # nothing prepared from it


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_user_files_in_an_output_dir_are_kept_byte_for_byte(tmp_path, capsys):
    """The issue's dir: a figure, a parquet file and a `.tmp` of the user's, among the study's
    folders, plus a temp file a killed atomic write of the product left (removed)."""
    out = tmp_path / "out"
    user = {
        "reports/figure1.png": b"\x89PNG user figure",
        "forecasts/my.parquet": b"user parquet",
        "logs/.session.tmp": b"user session",
        ".notes.tmp": b"user notes",
        "forecasts/.my.parquet.abcd1234.tmp": b"user temp of a user file",
    }
    for rel, data in user.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    killed = out / "forecasts" / ".all.parquet.k1ll3d_x.tmp"  # the product's own leftover
    killed.write_bytes(b"torn")
    argv = ["run", *tiny_study(), f"runtime.output_dir={out}"]
    assert main(argv) == 0, capsys.readouterr().err
    assert not killed.exists()
    tree = _tree(out)
    assert {rel: tree.get(rel) for rel in user} == user
    manifest = json.loads((out / "logs" / "qpipe-manifest.json").read_text())
    assert "forecasts/all.parquet" in manifest["files"]
    assert not set(user) & set(manifest["files"])
    lqr_tables = [rel for rel in tree if rel.startswith("forecasts/lqr_")]
    assert lqr_tables
    # a rerun without lqr removes the study's stale lqr tables, and still no file of the user's
    assert main([*argv, "models.lqr.enabled=false"]) == 0, capsys.readouterr().err
    tree = _tree(out)
    assert not [rel for rel in tree if rel.startswith("forecasts/lqr_")]
    assert {rel: tree.get(rel) for rel in user} == user


@pytest.mark.parametrize("rel", ["metrics.json", "forecasts/all.parquet", "train/ar_qr.parquet"])
def test_a_user_file_where_the_study_would_write_is_exit_2_naming_it(tmp_path, capsys, rel):
    out = tmp_path / "out"
    (out / rel).parent.mkdir(parents=True)
    (out / rel).write_bytes(b"the user's own")
    before = _tree(out)
    assert main(["run", *tiny_study(), f"runtime.output_dir={out}"]) == 2
    line = _error_line(capsys)
    assert str(out / rel) in line and "not written by this pipeline" in line
    assert _tree(out) == before


def test_missing_fits_that_train_gave_up_on_say_failed(tmp_path, fake_adapters, monkeypatch):
    import copy

    import pandas as pd
    from conftest import ROOT, SMALL_STUDY, make_config

    from pipeline.runtime.sizing.plan import ModelPlan, Plan
    from pipeline.runtime.store.progress import db_path, read_table
    from pipeline.stages.assemble import assemble
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import run_train

    monkeypatch.setenv("FAKE_FAIL_COUNTRIES", "C02")
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update({"output_dir": str(tmp_path / "out"), "retries": 0})
    config = make_config(d)
    prepare(config, ROOT)
    plan = Plan(n_workers=1, memory_limit_mb=2048, models={"fake_fail": ModelPlan(0, 8, 0)})
    assert run_train(config, "fake_fail", plan).failed == 24
    fits = read_table(db_path(config.output_dir), "progress")
    expected = pd.DataFrame(
        {
            "MODEL": fits["model"],
            "COUNTRY": fits["country"],
            "HORIZON": fits["horizon"],
            "QUANTILE": fits["quantile"],
            "WINDOW_END": pd.to_datetime(fits["origin"]),
        }
    )
    result = assemble(config.output_dir, "inflation", expected=expected, mcs=(0.1, 20, 0))
    missing = pd.read_parquet(result.missing)
    assert len(missing) == (fits["status"] == "failed").sum() and len(missing) > 0
    assert set(missing["COUNTRY"]) == {"C02"}
    assert set(missing["REASON"]) == {"failed"}
    assert not (config.output_dir / "progress" / "progress.parquet").exists()  # from the store


def test_an_error_during_a_run_logs_under_its_output_dir_and_only_its_own(
    tmp_path, capsys, monkeypatch
):
    import errno

    import pipeline.stages.prepare as prepare_module

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.parquet"))

    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)  # a run is under way there: its logs/ is usable
    monkeypatch.setattr(prepare_module, "write_parquet", no_space)
    assert main(["run", *tiny_study(), f"runtime.output_dir={out}"]) == 2
    log = _log_of(_error_line(capsys))
    assert log.parent == out / "logs" and stat.S_IMODE(log.stat().st_mode) == 0o600
    # the next command fails before holding a dir: its log is not put in the last one's dir
    assert main(["run", "rolling_window.size=1", f"runtime.output_dir={out}"]) == 2
    other = _log_of(_error_line(capsys))
    assert other.parent != out / "logs"
    other.unlink()
