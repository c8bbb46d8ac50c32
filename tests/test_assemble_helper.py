"""assemble's helper process (stages/assemble_helper.py): it reads the table it is given, and
it does not outlive a killed assemble (SIGKILL, as the resume tests do)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from conftest import process_alive

from pipeline.stages import assemble_helper
from pipeline.stages.assemble_helper import Helper

ROOT = Path(__file__).resolve().parents[1]


def test_a_dead_assembles_hand_off_file_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(assemble_helper, "RAM_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"{assemble_helper.HANDOFF_PREFIX}{dead.pid}-x.arrow"
    busy = tmp_path / f"{assemble_helper.HANDOFF_PREFIX}{os.getppid()}-y.arrow"
    orphan.write_bytes(b"rows"), busy.write_bytes(b"rows")
    helper = Helper(pa.table({"MODEL": ["a"]}))
    try:
        assert not orphan.exists() and busy.exists()  # a live process's file is its own
        assert Path(helper.identity[0]).parent == tmp_path
    finally:
        helper.close()


def test_the_helper_reads_the_rows_and_refuses_changed_ones():
    rows = pa.table({"MODEL": ["a", "b"], "HORIZON": [1, 3]})
    helper = Helper(rows)
    try:
        handoff = Path(helper.identity[0])
        assert handoff.exists()
        assert helper.submit(len).result() == 2  # fn(frame): the rows handed over
        assert not handoff.exists()  # removed once mapped: a killed assemble leaves none
        frame = helper.submit(_frame).result()
        assert frame["MODEL"].tolist() == ["a", "b"] and str(frame["MODEL"].dtype) == "string"
    finally:
        helper.close()
    helper = Helper(rows)
    handoff = Path(helper.identity[0])
    helper.close()  # before any task: the file goes with the helper
    assert not handoff.exists()
    helper = Helper(rows)
    try:
        time.sleep(0.01)  # a later mtime: not the file assemble wrote
        with pa.OSFile(helper.identity[0], "wb") as sink, pa.ipc.new_file(sink, rows.schema) as w:
            w.write_table(rows.slice(0, 1))
        with pytest.raises(RuntimeError, match="changed while assemble ran"):
            helper.submit(len).result()
    finally:
        helper.close()
    helper = Helper()  # started early, before assemble has its rows
    try:
        with pytest.raises(RuntimeError, match="call serve first"):
            helper.submit(len)
        helper.serve(rows.slice(1))
        assert helper.submit(len).result() == 1
    finally:
        helper.close()


def test_the_rows_go_to_a_ram_disk_with_room_else_to_the_temp_dir(tmp_path, monkeypatch):
    import tempfile

    from pipeline.stages import assemble_helper

    ram, temp = tmp_path / "ram", tmp_path / "temp"
    ram.mkdir()
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    rows = pa.table({"MODEL": ["a", "b"], "HORIZON": [1, 3]})
    for ram_dir, want in ((str(ram), ram), (str(tmp_path / "none"), temp), (None, temp)):
        monkeypatch.setattr(assemble_helper, "RAM_DIR", ram_dir)
        helper = Helper(rows)
        try:
            assert Path(helper.identity[0]).parent == want
            assert helper.submit(len).result() == 2
        finally:
            helper.close()
    monkeypatch.setattr(assemble_helper, "RAM_DIR", str(ram))
    assert assemble_helper._ram_dir(1 << 62) is None  # no room for it
    assert assemble_helper._ram_dir(1 << 10) == str(ram)


def _frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_the_helper_exits_when_assemble_is_killed(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from pathlib import Path
            import pyarrow as pa
            from pipeline.stages.assemble_helper import Helper

            if __name__ == "__main__":
                helper = Helper(pa.table({"MODEL": ["a"]}))
                helper.submit(len).result()
                print(*helper._pool._processes, flush=True)  # the helper's pid
                time.sleep(60)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    helper = int(proc.stdout.readline())
    assert process_alive(helper)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while process_alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(helper)


def test_idle_cpus_is_a_share_of_the_machine():
    from pipeline.stages.assemble_helper import IdleMeter, cpus

    meter = IdleMeter()
    sum(i * i for i in range(200_000))  # some ticks pass
    idle = meter.idle_cpus()
    assert 0.0 <= idle <= (os.cpu_count() or 1) and cpus() >= 1
