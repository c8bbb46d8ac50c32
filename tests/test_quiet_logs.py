"""A quiet, useful terminal (issue 21, items 3 and 4): Dask's and bokeh's lines and warnings go
to the run's log file, never to the terminal; the probe is one line, the dashboard URL appears
once per run, the run ends naming its report, forecast table and metrics.json; log lines print
above the progress bar, whose columns say what they count."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.models.plugins import registry
from pipeline.runtime.ui.logs import RunLog, configure_terminal_logging, third_party_to_run_log
from pipeline.runtime.ui.progress_bar import ProgressReporter


def test_dask_info_goes_to_the_log_file_only(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "data.synthetic.n_countries=2",
            "data.horizons=[1]",
            "data.lags=[1]",
            "rolling_window.size=24",
            "rolling_window.start_date=2024-01-01",
            "rolling_window.end_date=2024-02-01",
            "models.ar_qr.p=2",
            *registry.only("ar_qr", "rw", "climatology"),
            "runtime.max_workers=1",
            "runtime.dashboard_port=0",
            "runtime.in_process_below_s=0",  # a real cluster, whose INFO lines are checked
            "runtime.progress_bar=false",
            f"runtime.output_dir={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "train ar_qr:" in done.stderr  # the stage summaries stay on the terminal
    assert not re.search(r"INFO\s.*distributed\.", terminal), terminal
    (log,) = (out / "logs").glob("train-ar_qr-*.log")
    assert re.search(r"INFO distributed\.(scheduler|nanny|core)", log.read_text())
    # no Dask/bokeh/tornado text, warning or traceback on the terminal (a real cluster ran)
    for word in ("distributed", "bokeh", "tornado", "Traceback", "Warning", "WARNING"):
        assert word not in terminal, (word, terminal)
    # the probe in one line, naming the whole run's log, which holds the details
    (probe_line,) = [line for line in done.stderr.splitlines() if "probe" in line]
    (run_log,) = (out / "logs").glob("run-*.log")
    assert str(run_log) in probe_line
    assert "worker baseline" in run_log.read_text()
    # three models trained on one cluster: its dashboard named once
    assert done.stderr.count("dashboard:") == 1, done.stderr
    # the last lines: the report, the forecast table, metrics.json (paths that exist)
    last = done.stdout.strip().splitlines()[-3:]
    assert [line.split()[0] for line in last] == ["report:", "forecasts:", "metrics:"]
    named = [Path(line.split(None, 1)[1]) for line in last]
    assert named == [
        out / "reports/index.html",
        out / "forecasts/all.parquet",
        out / "metrics.json",
    ]
    assert all(path.is_file() for path in named)


def test_dask_bokeh_and_their_warnings_reach_only_the_run_log(tmp_path, capfd):
    import distributed  # noqa: F401

    # what distributed and bokeh do on import outside pytest: a stderr handler of their own
    # on loggers that do not propagate to the root
    own = {name: logging.StreamHandler(sys.stderr) for name in ("distributed", "bokeh")}
    for name, handler in own.items():
        logging.getLogger(name).addHandler(handler)
    configure_terminal_logging()
    try:
        with RunLog(tmp_path, "run-x") as run_log, third_party_to_run_log():
            logging.getLogger("distributed.nanny").warning(
                "Worker process still alive after 4.0 seconds, killing"
            )
            logging.getLogger("tornado.application").error(
                "Uncaught exception\nTraceback (most recent call last):\nAssertionError"
            )
            logging.getLogger("bokeh.server.protocol_handler").error("browser went away")
            warnings.warn_explicit(
                "Port 8787 is already in use.",
                UserWarning,
                filename=f"{os.sep}site-packages{os.sep}distributed{os.sep}node.py",
                lineno=1,
            )
            logging.getLogger("pipeline.train").warning("a warning of our own")
        restored = all(handler in logging.getLogger(n).handlers for n, handler in own.items())
    finally:
        logging.captureWarnings(False)
        for name, handler in own.items():
            logging.getLogger(name).removeHandler(handler)
    captured = capfd.readouterr()
    terminal = captured.out + captured.err
    assert "a warning of our own" in terminal  # the pipeline's own warnings stay
    text = run_log.path.read_text()
    for line in ("still alive", "AssertionError", "browser went away", "Port 8787"):
        assert line not in terminal, terminal
        assert line in text, text
    assert restored  # their own handlers are back once the cluster is gone


@pytest.fixture(autouse=True)
def _terminal_logging_undone():
    yield
    logging.captureWarnings(False)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_qpipe_terminal", False)]:
        root.removeHandler(handler)


def test_log_lines_print_above_the_progress_bar_whose_columns_are_labelled(capsys):
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150, color_system=None)
    configure_terminal_logging()
    with ProgressReporter("ar_qr", 10, True, console=console) as bar:
        bar.update(4, 4, 0)
        logging.getLogger("pipeline.train").warning("task t1 (2 fits) failed: memory")
        bar.update(6, 10, 2)
    text = screen.getvalue()
    # the log line went through the bar's console: the bar's line erased, the log line
    # printed whole, then the bar drawn again below it
    line = "\x1b[2KWARNING pipeline.train: task t1 (2 fits) failed: memory\n"
    assert line in text, text
    assert "10/10 fits" in text.split(line, 1)[1]
    assert "task t1" not in capsys.readouterr().err
    final = text.rsplit("\x1b[2K", 1)[-1].splitlines()[0]  # the bar as last drawn
    assert re.search(r"ar_qr .*10/10 fits .*fits/s .*2 failed .*ETA ", final)


def test_a_model_waiting_behind_another_counts_its_rate_from_its_first_task(monkeypatch, caplog):
    """Side by side (stages/train_lanes.py), a model's first task may start long after its
    reporter: its rate and ETA count from that task's start, not from the reporter's."""
    import pipeline.runtime.ui.progress_bar as progress_bar

    clock = {"now": 1000.0}
    monkeypatch.setattr(progress_bar.time, "perf_counter", lambda: clock["now"])
    caplog.set_level(logging.INFO, logger="pipeline.train")
    with ProgressReporter("rw", 100, False) as bar:
        clock["now"] += 98.0  # waited 90 s behind another model's tasks, then ran 8 s
        bar.update(40, 40, 0, busy_s=8.0)
        clock["now"] += 2.0
        bar.update(40, 80, 0, busy_s=2.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rw: ")]
    # 40 fits in its first task's 8 s, then 80 in 10 s (counted from the reporter's start:
    # 0.4 then 0.8 fits/s, ETA 150 then 25 s)
    assert lines == [
        "rw: 40/100 fits, 5.0 fits/s, 0 failed, ETA 12 s",
        "rw: 80/100 fits, 8.0 fits/s, 0 failed, ETA 2 s",
    ], lines
