"""SIGTERM while train's Dask cluster is still starting (its workers being spawned): the run
stops within a couple of seconds with exit 143 and one line, leaves no process and no
semaphore behind (nothing from multiprocessing's resource tracker after the run), and a resume
writes the uninterrupted run's bytes. Before, it waited for the start and then for
Dask's graceful close (5-9 s under load)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import chaos_study
import pytest
from chaos_study import command, differing, run, signal_and_reap
from conftest import ROOT

clean_run = chaos_study.clean_run  # the session's uninterrupted run (a fixture)
STARTING = "tasks of <="  # train's line just before the cluster starts


@pytest.mark.slow
def test_sigterm_while_the_cluster_starts_stops_at_once(tmp_path: Path, clean_run: Any) -> None:
    # (clean_run: chaos_study's fixture, a Path or the suite branch's CleanRun; `differing`
    # takes either as that module defines it)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        command(out, "runtime.in_process_below_s=0"), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    starting = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if STARTING in line:
                starting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert starting.wait(300), "".join(lines)
        time.sleep(0.3)  # the scheduler and nannies are starting, the workers being spawned
        assert not any(line.startswith("INFO pipeline.train: dashboard") for line in lines)
        reaped = signal_and_reap(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    output = "".join(lines)
    assert reaped.code == 143, output
    # was 5-9 s: the start, then a graceful close
    assert reaped.stop_s < 3.0, (reaped.stop_s, output)
    assert reaped.orphans == [], reaped.orphans
    assert "interrupted (SIGTERM)" in output and "Traceback" not in output, output
    # the nannies' semaphores unlinked before the exit: multiprocessing's resource tracker,
    # which shares this output and ends after the run, had to clean none up
    assert "leaked semaphore" not in output, output
    code, err = run(out)
    assert code == 0, err
    assert differing(out, clean_run) == []
