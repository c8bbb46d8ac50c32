"""One run per output dir: a second run exits 2 naming the first; a killed run never blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, tiny_study

from pipeline.runtime.store.run_lock import OutputDirBusy, RunLock, _holder, remove_temp_files

HOLD = "import sys, time; from pipeline.runtime.store.run_lock import RunLock\n" \
    "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n"  # fmt: skip

TINY = tiny_study()


def holder_pid(path: Path) -> str | None:
    return _holder(os.stat(path)).get("pid") if path.exists() else None


def test_a_held_dir_refuses_a_second_holder_and_a_killed_holder_never_blocks(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirBusy) as busy, RunLock(tmp_path):
            pass
        message = str(busy.value)
        assert f"pid {holder.pid} on host " in message and "started 20" in message
        assert "kill" in message and "runtime.output_dir" in message
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    with RunLock(tmp_path):  # the kernel released the killed holder's lock
        assert holder_pid(tmp_path) == str(os.getpid())
    assert list(tmp_path.iterdir()) == []  # the lock writes nothing


def test_temp_files_of_killed_writes_are_removed(tmp_path: Path) -> None:
    """Temp files named as pipeline.io.atomic_path names them (mkstemp's 8 random characters)
    next to a file the product writes go; a user's `.tmp` files stay."""
    import tempfile

    (tmp_path / "train").mkdir()
    stale = []
    for folder, name in (("train", "ar_qr.parquet"), (".", "probe.json")):
        fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=tmp_path / folder)
        os.write(fd, b"torn")
        os.close(fd)
        stale.append(Path(path))
    keep = [tmp_path / "train/ar_qr.parquet", tmp_path / ".session.tmp",
            tmp_path / "train/.notes.txt.abcd1234.tmp"]  # fmt: skip
    for p in keep:
        p.write_bytes(b"ok")
    assert sorted(remove_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def _run(out: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *TINY, f"runtime.output_dir={out}"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_dir_exits_2_and_the_first_completes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _run(out, tmp_path)
    t0 = time.monotonic()
    while holder_pid(out) != str(first.pid):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() - t0 < 120, "the first run never took the lock"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run: the second run meets a live holder
    try:
        second = _run(out, tmp_path)
        _, err = second.communicate(timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # the undisturbed run the first must equal goes on beside it (2 cores), once the first
    # has probed: it reuses that measurement instead of taking its own
    while not (out / "probe.json").exists() and first.poll() is None:
        assert time.monotonic() - t0 < 300, "the first run never probed"
        time.sleep(0.05)
    clean = _run(tmp_path / "clean", tmp_path)
    assert second.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"pid {first.pid}" in lines[0] and "in use by a running study" in lines[0]
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    # the first run's forecasts are complete and equal an undisturbed run's
    _, err2 = clean.communicate(timeout=300)
    assert clean.returncode == 0, err2
    got = pd.read_parquet(out / "forecasts/all.parquet")
    want = pd.read_parquet(tmp_path / "clean/forecasts/all.parquet")
    # countries x origins x quantiles x models (ar_qr, lqr: tiny_study's)
    assert len(got) == 3 * 6 * 3 * 2 and set(got["MODEL"]) == {"ar_qr", "lqr"}
    pd.testing.assert_frame_equal(got, want)
