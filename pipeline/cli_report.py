"""The one line of an exit-2 error and the log file that keeps its traceback (pipeline.cli).

Loaded only when a command fails on bad input, so a command that succeeds never imports it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def bad_input(message: str) -> int:
    """One line on the terminal; the traceback in a log file (named in the line)."""
    log_path = write_error_log()
    where = f" (details: {log_path})" if log_path else ""
    print(f"error: {message}{where}", file=sys.stderr)
    return EXIT_BAD_INPUT


def write_error_log() -> Path | None:
    """The traceback, in a new file of mode 0600 that no one else can have prepared.

    Under `{output_dir}/logs/` when this run held its output dir and the run's logs/ folder is
    there (a start refused for bad input leaves the dir as it was), else in the system temp
    dir. mkstemp picks an unpredictable name and opens it with O_CREAT | O_EXCL (a symlink
    planted at any name is never followed).
    """
    import tempfile
    import traceback

    from pipeline.runtime.store.run_lock import last_held_output_dir

    held = last_held_output_dir()
    logs = held / "logs" if held is not None else None
    folder = logs if logs is not None and logs.is_dir() and not logs.is_symlink() else None
    try:
        fd, name = tempfile.mkstemp(prefix="qpipe-error-", suffix=".log", dir=folder)
    except OSError:
        if folder is None:
            return None
        try:  # the output dir filled up or went away meanwhile: the temp dir still works
            fd, name = tempfile.mkstemp(prefix="qpipe-error-", suffix=".log")
        except OSError:
            return None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
    except OSError:
        return None
    return Path(name)
