"""Bad input at the entry points that used to crash, mislead or pass silently (issue 18's
hostile pass): each is exit code 2 and one line at the command line, a QpipeError from
`pipeline.backtest`, and leaves what exists as it was.

- config files that are not YAML (`--config`, a project's conf/, params.yaml under `stage`);
- a directory where a file is written (`compose --output`, `write-config`);
- `runtime.scheduler_address` malformed, refused, or answered by something that is no Dask
  scheduler (Dask's traceback after a minute, exit 1, and prepare's files before);
- empty TIME or COUNTRY cells (an empty COUNTRY row was dropped without a word), TIME errors
  without the file, a folder's bad file not named;
- origins outside the data (named `rolling_window.size` with every country's reason), origins
  that get no fit (a shorter study without a word);
- `backtest(overrides=5)` (a TypeError), a DataFrame indexed by TIME/COUNTRY.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import test_bad_input
from conftest import NO_DASHBOARD, ROOT, make_config, tiny_study
from test_bad_input import _args, _expect_bad_input, _good_frame, _write

import pipeline
from pipeline.cli import main
from pipeline.config import ConfigError, validate
from pipeline.config.compose import compose_dict
from pipeline.data.errors import DataError

earlier_run = test_bad_input.earlier_run  # an output dir holding an earlier run's files


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    return line


# --- config files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (b"data: [1,\n", ("bad.yaml", "valid YAML", "line 2")),
        (b"\x80\x81binary", ("bad.yaml", "UTF-8")),
        (b"- 1\n- 2\n", ("--config", "got 'a list'")),
        (b"", ("--config", "an empty file")),
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_line(tmp_path, capsys, content, needles):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    out = tmp_path / "out"
    assert main(["run", "--config", str(bad), f"runtime.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert all(n in line for n in needles), line
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"bad\.yaml|--config"):  # the API: the same check
        pipeline.backtest([f"runtime.output_dir={out}"], config=bad)


def test_a_project_conf_or_params_file_that_is_not_yaml_is_one_line_naming_it(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "pipeline" / "conf", project / "conf")
    (project / "params.yaml").write_text("data: {horizons: [1,\n")
    stage = _cli(project, "stage", "prepare")
    assert stage.returncode == 2
    assert "params.yaml" in _one_error_line(stage.stderr) and "line 2" in stage.stderr
    with (project / "conf" / "config.yaml").open("a") as handle:
        handle.write("defaults: [\n")
    for args in (["compose"], ["run", "--dry-run"]):
        result = _cli(project, *args)
        assert result.returncode == 2, result.stderr
        line = _one_error_line(result.stderr)
        assert "conf/config.yaml" in line and "valid YAML" in line
    (project / "conf" / "config.yaml").write_text((ROOT / "pipeline/conf/config.yaml").read_text())
    (project / "conf" / "data" / "eurostat.yaml").write_bytes(b"\xff\xfe not UTF-8")
    result = _cli(project, "compose", "data=eurostat")
    assert result.returncode == 2
    assert "conf/data/eurostat.yaml" in _one_error_line(result.stderr)
    assert (project / "params.yaml").read_text() == "data: {horizons: [1,\n"  # never rewritten


@pytest.mark.parametrize("command", [["compose", "--output"], ["write-config", "--force"]])
def test_a_directory_where_a_file_is_written_is_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken" / "inside").mkdir(parents=True)
    argv = [*command, "taken"] if command[0] == "compose" else [command[0], "taken", command[1]]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "taken" in line and "a directory is in the way" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inside", "taken"]  # no temp file left


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("runtime.output_dir=", "runtime.output_dir", "'.' for the current one"),
        ("runtime.model_cache_dir=", "runtime.model_cache_dir", "null or a directory path"),
        ("experiment=nope", "experiment", "['quick', 'seed', 'seed_calibrated', 'seed_qrf']"),
        ("calibration=nope", "calibration", "['conformal', 'none', 'tracker']"),
    ],
)
def test_an_empty_dir_or_an_unknown_preset_names_the_key_and_the_choices(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        validate(compose_dict([override]))
    assert info.value.key == key and fragment in str(info.value)


def test_a_file_in_the_way_of_the_model_cache_names_that_setting(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    cache = tmp_path / "file" / "models"
    argv = ["run", *tiny_study(), f"runtime.output_dir={tmp_path / 'out'}"]
    assert main([*argv, f"runtime.model_cache_dir={cache}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.count("runtime.model_cache_dir") == 2 and "runtime.output_dir" not in line


def test_init_without_dvc_on_path_writes_nothing(tmp_path, monkeypatch):
    from pipeline.init_project import init_project

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(tools))
    with pytest.raises(ConfigError, match="`dvc` on PATH"):
        init_project(tmp_path / "project")
    assert not (tmp_path / "project").exists()  # no half project to finish by hand


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["verify", "--output-dir", "{tmp}/absent"], "--output-dir"),
        (["verify", "--output-dir", "{tmp}/file"], "--output-dir"),
        (["verify", "--output-dir", "{tmp}", "--cache-dir", "{tmp}/absent"], "--cache-dir"),
        (["results", "--output-dir", "{tmp}/absent", "--out", "{tmp}/r.md"], "--output-dir"),
        (["monitor", "--watch", "--interval", "0", "--output-dir", "{tmp}"], "--interval"),
    ],
)
def test_inspecting_what_is_no_run_is_one_line_and_creates_nothing(tmp_path, capsys, argv, key):
    (tmp_path / "file").write_text("mine")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert f"config error at '{key}'" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- runtime.scheduler_address ------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["nonsense", "tcp://127.0.0.1:99999", "tcp://:8786", "http://127.0.0.1:8786"]
)
def test_a_malformed_scheduler_address_is_a_config_error(address):
    with pytest.raises(ConfigError, match=r"runtime\.scheduler_address.*tcp://10\.0\.0\.5:8786"):
        validate(compose_dict([f"runtime.scheduler_address={address}"]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_scheduler_nobody_runs_is_exit_2_at_once_and_writes_nothing(
    tmp_path, capsys, monkeypatch
):
    """The run's whole check (refused connects retried every 0.5 s until its deadline, then
    exit 2) in the driver's process, its deadline 1.5 s instead of the 10 s a user waits for
    a scheduler still starting: the same path, without 10 s of the suite's wall."""
    from pipeline.config import scheduler

    # the deadline users get stays well below Dask's own timeouts (over a minute)
    assert scheduler.CONNECT_TIMEOUT_S <= 10.0
    monkeypatch.setattr(scheduler, "CONNECT_TIMEOUT_S", 1.5)
    checks: list[float] = []  # the seconds each call of the check took
    check = scheduler.check_reachable

    def timed(address: str, timeout: float | None = None) -> None:
        t0 = time.monotonic()
        try:
            check(address, timeout)
        finally:
            checks.append(time.monotonic() - t0)

    monkeypatch.setattr(scheduler, "check_reachable", timed)
    out = tmp_path / "out"
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    code = main(["run", *tiny_study(), f"runtime.output_dir={out}",
                 f"runtime.scheduler_address={address}"])  # fmt: skip
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "runtime.scheduler_address" in line and "Connection refused" in line
    assert time.monotonic() - started < 30  # Dask's own timeouts took over a minute
    # refused connects were retried up to the deadline (a scheduler may still be starting)
    assert len(checks) == 1 and checks[0] >= 1.0, checks
    assert not out.exists()


def test_a_port_that_accepts_but_is_no_dask_scheduler_is_refused():
    """A firewall or proxy may accept any connection: the scheduler's handshake is awaited."""
    from pipeline.config.scheduler import check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        held: list[socket.socket] = []
        threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
        with pytest.raises(ConfigError, match=r"runtime\.scheduler_address.*no answer"):
            check_reachable(f"tcp://127.0.0.1:{port}", timeout=1.0)
        for connection in held:
            connection.close()


def test_a_dask_scheduler_still_starting_passes_the_check():
    """Refused connects are retried within the check's time, as Dask's client retries them:
    `dask scheduler & qpipe run ...` works."""
    from pipeline.config.scheduler import check_reachable

    port = _free_port()
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), *NO_DASHBOARD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        check_reachable(f"tcp://127.0.0.1:{port}", timeout=60.0)  # at once: not listening yet
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)


# --- data ---------------------------------------------------------------------------------


def test_an_empty_country_cell_is_an_error_not_a_dropped_row(tmp_path, earlier_run, capsys):
    frame = _good_frame()
    frame.loc[5, "COUNTRY"] = ""
    path = _write(tmp_path, frame)
    line = _expect_bad_input(capsys, _args(path, earlier_run), earlier_run, "panel.csv")
    assert "1 rows have an empty COUNTRY" in line and "2014-06" in line
    with pytest.raises(DataError, match="empty COUNTRY"):  # the API's DataFrame: the same
        pipeline.backtest(_args(path, earlier_run)[1:], data=frame)


def test_an_empty_time_cell_says_so_and_names_the_file(tmp_path, earlier_run, capsys):
    frame = _good_frame()
    frame.loc[7, "TIME"] = ""
    path = _write(tmp_path, frame)
    line = _expect_bad_input(capsys, _args(path, earlier_run), earlier_run, str(path))
    assert "1 rows have an empty TIME" in line and "not month starts" not in line


def test_a_bad_month_in_a_folder_of_country_files_names_that_file(tmp_path, earlier_run, capsys):
    folder = tmp_path / "countries"
    folder.mkdir()
    frame = _good_frame()
    for country, rows in frame.groupby("COUNTRY"):
        rows = rows.drop(columns="COUNTRY")
        if country == "C02":
            rows.iloc[3, 0] = "2014-13"
        rows.to_csv(folder / f"{country}.csv", index=False)
    line = _expect_bad_input(capsys, _args(folder, earlier_run), earlier_run, "'2014-13'")
    assert str(folder / "C02.csv") in line


# --- origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"), [("2030-01-01", "2031-01-01"), ("1980-01-01", "1985-01-01")]
)
def test_origins_outside_the_data_name_the_dates_and_the_months_that_work(tmp_path, start, end):
    d = {
        "data": {"synthetic": {"n_countries": 30}, "lags": [1], "horizons": [1]},
        "rolling_window": {"size": 36, "start_date": start, "end_date": end},
        "runtime": {"output_dir": str(tmp_path / "out")},
    }
    from pipeline.stages.prepare import prepare

    with pytest.raises(ConfigError) as info:
        prepare(make_config(d), ROOT)
    assert info.value.key == "rolling_window.start_date"
    # synthetic C01 starts 1997-01; ar_qr's 12 lags (0..11) and 36 months later: 2000-11
    assert "from 2000-11 to 2024-12" in str(info.value) and "and 27 more" in str(info.value)
    assert len(str(info.value)) < 1000
    assert not (tmp_path / "out").exists()


def test_origins_past_the_data_are_a_warning_not_a_silent_shorter_study(tmp_path, caplog):
    d = {
        "data": {"synthetic": {"n_countries": 2}, "lags": [1], "horizons": [1]},
        "rolling_window": {"size": 36, "start_date": "2024-06-01", "end_date": "2025-03-01"},
        "runtime": {"output_dir": str(tmp_path / "out")},
    }
    from pipeline.stages.prepare import prepare

    prepare(make_config(d), ROOT)
    (warning,) = [r.getMessage() for r in caplog.records if "have no country" in r.getMessage()]
    assert "3 of 10 origins (2025-01, 2025-02, 2025-03)" in warning
    assert "2000-11..2024-12" in warning


# --- pipeline.backtest --------------------------------------------------------------------


def test_backtest_rejects_overrides_that_are_no_list_and_an_indexed_frame(tmp_path):
    with pytest.raises(ConfigError, match="overrides"):
        pipeline.backtest(5)  # type: ignore[arg-type]
    frame = _good_frame().set_index(["TIME", "COUNTRY"])
    with pytest.raises(DataError, match=r"reset_index\(\)"):
        pipeline.backtest([f"runtime.output_dir={tmp_path / 'out'}"], data=frame)
    assert not (tmp_path / "out").exists()
