"""The study the chaos tests break (tests/test_chaos_*.py): rw alone on 3 synthetic countries,
144 origins, 4 horizons, 3 quantiles (5,184 fits: a few seconds per run), run as a user runs it
(`python -m pipeline run` in a process of its own), and the files a resumed run must
reproduce byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import ROOT

from pipeline.models.plugins import registry

RW_STUDY = (
    *registry.only("rw"),
    "evaluation.combo.enabled=false",
    "evaluation.mcs_reps=50",
    "rolling_window.start_date=2012-01-01",
    "rolling_window.end_date=2023-12-01",
    "data.horizons=[1,3,6,12]",
    "data.synthetic.n_countries=3",
    # fan charts of one country (4, not 12): rendering them was most of each assemble, and
    # these tests break runs, not charts (the report's charts: tests/test_plots_report.py)
    "evaluation.fan_countries=[C01]",
    "runtime.progress_bar=false",
    "runtime.dashboard_port=0",
)
FITS = 3 * 144 * 4 * 3
# what a resumed run must write as the uninterrupted one did
COMPARED = ("forecasts/all.parquet", "metrics.json", "train/rw.parquet")


def command(out: Path, *extra: str) -> list[str]:
    """`python -m pipeline run` of the study into `out`."""
    return [sys.executable, "-m", "pipeline", "run", *RW_STUDY, f"runtime.output_dir={out}", *extra]


def start(out: Path, *extra: str) -> subprocess.Popen[str]:
    """The study's run into `out` (stdout, stderr piped)."""
    return subprocess.Popen(
        command(out, *extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(out: Path, *extra: str) -> tuple[int, str]:
    """Run the study to its end: (exit code, stderr)."""
    proc = start(out, *extra)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


class CleanRun:
    """The study's uninterrupted run, started in a process of its own: a test breaks and
    resumes its own run beside it (on 2 cores its wall time is mostly hidden) and reads its
    files only once it ended (`path`)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.log = out.with_name("clean.log")  # a file, not a pipe nobody reads while it runs
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                command(out), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        # the broken runs start once it has probed, so every run of the session reuses its
        # one measurement (the same plan, as when it ran first and alone)
        t0 = time.monotonic()
        while not (out / "probe.json").exists() and self.proc.poll() is None:
            assert time.monotonic() - t0 < 600, "the clean run never finished its probe"
            time.sleep(0.05)

    def path(self) -> Path:
        """Its output dir, once it ended with exit 0."""
        code = self.proc.wait(timeout=600)
        assert code == 0, self.log.read_text()
        return self.out


def differing(out: Path, clean: CleanRun) -> list[str]:
    """The compared files whose bytes differ from the uninterrupted run's (or are missing)."""
    clean_dir = clean.path()
    return [
        name
        for name in COMPARED
        if not (out / name).exists() or (out / name).read_bytes() != (clean_dir / name).read_bytes()
    ]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


_CLEAN: list[CleanRun] = []  # each test module binds the fixture anew: one run for them all


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CleanRun]:
    """The study run once, uninterrupted: what every broken-then-resumed run must equal."""
    if not _CLEAN:
        _CLEAN.append(CleanRun(tmp_path_factory.mktemp("chaos") / "clean"))
    yield _CLEAN[0]
    if _CLEAN[0].proc.poll() is None:  # the session ended before a test read it
        _CLEAN[0].proc.kill()
        _CLEAN[0].proc.wait()


# The line each stage ends with (stderr and stdout of `python -m pipeline run` together): a
# stage runs from the line of the one before it (prepare: from the start) to its own.
STAGE_ENDS = {
    "prepare": "INFO pipeline: prepare:",
    "probe": "INFO pipeline: probe:",
    "train": "INFO pipeline: train:",
    "assemble": "metrics:   ",
}


def session_processes(sid: int) -> list[psutil.Process]:
    """The live processes of session `sid` (a run started with start_new_session: its
    driver, and every worker, nanny, scheduler or fork it started, unless one left the
    session on purpose); zombies, which have exited, are not counted."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return found


@dataclass
class Interrupted:
    """What one interrupted run did: the stage it was in, the seconds from the signal to the
    driver's exit and to the last of its processes' exit, its exit code and output."""

    stage: str
    exit_code: int
    stop_s: float
    orphans: list[str]
    all_gone_s: float
    output: str


@dataclass
class Reaped:
    """A signalled driver's end: its exit code, the seconds from the signal to its exit and to
    the end of every process of its session, and the orphans (named)."""

    code: int
    stop_s: float
    all_gone_s: float
    orphans: list[str]


def signal_and_reap(proc: subprocess.Popen[str], sig: int) -> Reaped:
    """Send `sig` to the driver `proc` (started in a session of its own) and wait for it and
    then for every process of its session (those alive 5 s after the driver's exit are
    orphans: named, then killed)."""
    t0 = time.monotonic()
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=120)
    stop_s = time.monotonic() - t0
    deadline = time.monotonic() + 5.0
    while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    all_gone_s = time.monotonic() - t0
    orphans = [" ".join(p.cmdline()[:4]) for p in left]
    for p in left:
        p.kill()
    return Reaped(code, stop_s, all_gone_s, orphans)


def _default_sigint() -> None:
    """Ctrl-C's default action in the run, whatever this process inherited: a shell without
    job control starts background commands with SIGINT ignored, and so would a suite run in
    the background (Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(command: list[str], stage: str, delay_s: float, sig: int) -> Interrupted:
    """Run `command` (a `python -m pipeline run`) in a session of its own, send `sig` to its
    driver `delay_s` after `stage` began, and wait for every process of the session to end
    (those alive 5 s after the driver's exit are orphans: named, then killed)."""
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    lines: list[str] = []
    began = threading.Event()
    order = list(STAGE_ENDS)
    before = order[order.index(stage) - 1] if stage != order[0] else None
    if before is None:
        began.set()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if before is not None and line.startswith(STAGE_ENDS[before]):
                began.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert began.wait(600), "".join(lines)
        time.sleep(delay_s)
        ended = [s for s in order if any(line.startswith(STAGE_ENDS[s]) for line in lines)]
        at = order[len(ended)] if len(ended) < len(order) else "after"
        reaped = signal_and_reap(proc, sig)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    return Interrupted(
        at, reaped.code, reaped.stop_s, reaped.orphans, reaped.all_gone_s, "".join(lines)
    )
