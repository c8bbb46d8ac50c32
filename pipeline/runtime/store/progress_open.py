"""Opening the progress database for its writer: WAL mode, an integrity check, the format's
tables made in one transaction; a store in an earlier format (an earlier qpipe) or unreadable
is moved aside and a new one made (it is derived data: the fit cache holds every result).
progress.py's ProgressStore writes through the connection this gives."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from pipeline.runtime.store.progress_format import FORMAT, SCHEMA, OldFormat

log = logging.getLogger("pipeline.train")
# models training side by side open their stores at once: one open (WAL switch, schema) at a time
_OPENING = threading.Lock()


def open_store(path: Path) -> tuple[sqlite3.Connection, Path | None]:
    """The writer's connection to the store at `path` (made if missing), and where an old or
    unreadable store there was moved (None when it opened as it was). A full disk or a store
    in use raises: neither is a damaged store."""
    with _OPENING:
        try:
            return _open(path), None
        except sqlite3.DatabaseError as error:
            code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code
            if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise  # a full disk or a store in use, not a damaged store
            old = isinstance(error, OldFormat)
            moved = _quarantine(path, "old" if old else "damaged")
            log.warning(
                "progress store %s is %s (%s): moved to %s; rebuilding it from the fit "
                "cache (earlier runs' history and tracebacks stay in the moved file)",
                path,
                "in an earlier format" if old else "unreadable",
                error,
                moved,
            )
            return _open(path), moved


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a process crash (not power loss)
        conn.execute("PRAGMA synchronous=NORMAL")
        # a checkpointed WAL shrinks back (a run's compaction writes a few MB at once)
        conn.execute("PRAGMA journal_size_limit=8388608")
        (check,) = conn.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (tables,) = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        if version != FORMAT and tables:
            raise OldFormat(f"format {version}; this qpipe writes format {FORMAT}")
        if not tables:  # a new file: pages freed by compaction go back to the disk
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        # one transaction: a reader sees no tables or every table and the format
        # (IMMEDIATE: it waits for another connection's write instead of failing as busy)
        conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={FORMAT};COMMIT;")
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def _quarantine(path: Path, folder: str) -> Path:
    """Move the store's files (with its WAL and shared memory) to `folder` beside it."""
    target = path.parent / folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, target.with_name(target.name + suffix))
    return target
