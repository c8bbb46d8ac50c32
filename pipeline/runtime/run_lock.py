"""One run per output dir: an exclusive `fcntl.flock` on the output dir itself, held for the
whole run, plus the removal of temp files that killed atomic writes left behind.

The kernel drops a flock when its process dies (SIGKILL, OOM), so a lock left by a killed run
never blocks the next one. Nothing is written for the lock (a run refused for bad input leaves
the dir as it was); the holder's pid comes from /proc/locks, its start time and command from
its process, and they name it in the message a second run exits with.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from pipeline.errors import QpipeError

log = logging.getLogger("pipeline")
# where a run writes (atomic writes leave `.<name>.<random>.tmp` here when killed mid-way);
# the output dir itself is scanned only at its top level (under dvc it is the repository root).
# The fit cache is not here: other dirs may share it, so fit_cache.py removes only old orphans.
OUTPUT_SUBDIRS = ("data/prepared", "train", "forecasts", "reports", "progress", "logs")


class OutputDirBusy(QpipeError, RuntimeError):
    """Another live run holds the output dir (exit code 2: the message names it and the fix)."""


class RunLock:
    """`with RunLock(output_dir):` holds the dir for this process, or raises OutputDirBusy."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.output_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.fstat(fd))
            os.close(fd)
            raise OutputDirBusy(self._busy_message(holder)) from None
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def _busy_message(self, holder: dict[str, str]) -> str:
        pid = holder.get("pid", "?")
        who = f"pid {pid} on host {socket.gethostname()}, started {holder.get('started', '?')}"
        if holder.get("command"):
            who += f": {holder['command']}"
        return (
            f"output dir {self.output_dir} is in use by a running study ({who}); wait for it to "
            f"finish (`python -m pipeline monitor --output-dir {self.output_dir}`), stop it "
            f"(`kill {pid}`), or choose another runtime.output_dir"
        )


def _holder(st: os.stat_result) -> dict[str, str]:
    """The process holding a flock on the file `st` (from /proc/locks), with its start time."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK" or parts[5] != dev:
            continue
        pid = parts[4]
        out = {"pid": pid}
        try:
            import psutil

            proc = psutil.Process(int(pid))
            out["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(proc.create_time()))
            out["command"] = " ".join(proc.cmdline())[:300]
        except Exception:  # gone meanwhile, or not ours to inspect: the pid still names it
            pass
        return out
    return {}


def remove_temp_files(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files of atomic writes killed mid-way (call while holding the RunLock)."""
    out = Path(output_dir)
    found = list(out.glob(".*.tmp"))
    for sub in OUTPUT_SUBDIRS:
        if (out / sub).is_dir():
            found.extend((out / sub).rglob(".*.tmp"))
    removed = []
    for path in found:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    if removed:
        log.warning(
            "removed %d temp files left by an interrupted write: %s",
            len(removed),
            ", ".join(str(p) for p in removed[:10]),
        )
    return removed
