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
# the output dir itself is scanned only at its top level (under dvc it is the repository root),
# and only temp files of names the product writes are removed (pipeline.runtime.store.manifest).
# The fit cache is not here: other dirs may share it, so fit_cache.py removes only old orphans.
OUTPUT_SUBDIRS = ("data/prepared", "train", "forecasts", "reports", "progress", "logs")


_last_held: list[Path] = []  # the output dir this process last held (the error log's home)


def last_held_output_dir() -> Path | None:
    """The output dir this process last held a RunLock on since `forget_held` (None if none)."""
    return _last_held[-1] if _last_held else None


def forget_held() -> None:
    """Start of a command: an output dir an earlier command held is not this one's."""
    _last_held.clear()


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
        _last_held[:] = [self.output_dir]
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
    """Delete temp files that the product's own atomic writes left when killed (call while
    holding the RunLock): `.{name}.{8 random}.tmp` next to a `name` the product writes there
    (its naming or its manifest). A user's file, `.tmp` or not, is never touched."""
    from pipeline.runtime.store.manifest import OutputFiles, has_product_naming, temp_target

    out = Path(output_dir)
    ours = OutputFiles(out)
    found = [p for p in out.glob(".*.tmp")]
    for sub in OUTPUT_SUBDIRS:
        if (out / sub).is_dir():
            found.extend((out / sub).rglob(".*.tmp"))
    removed = []
    for path in found:
        target = temp_target(path.name)
        if target is None or not path.is_file() or path.is_symlink():
            continue
        rel = ours.rel(path.parent / target)
        if rel is None or not (has_product_naming(rel) or ours.owns(path.parent / target)):
            continue
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
