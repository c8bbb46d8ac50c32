"""Wall time of each stage, in `{output_dir}/logs/timings.json`.

Each stage's entry is the latest run's `{"seconds", "status", "run", "at"}` (benchmarks and
`scale_stages` read `seconds` and `status` of every entry, so the file stays one object of
stages). A no-op rerun records its stages as skipped in ~0 s; so that the results page still
shows the cost of the run that computed the outputs, a skipped entry carries the last run that
did the stage's work under `"worked"` (the same four fields). `run` is the UTC start of the run
the entry belongs to, `at` the stage's own end. The file is rewritten atomically (io.write_json)
at each stage's end. `python -m pipeline results` reads it (`read_timings`) for the results
page's cost section (evaluation/results_run.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.io import read_json, write_json

TIMINGS_FILE = Path("logs/timings.json")
SKIPPED = "skipped"
log = logging.getLogger("pipeline")


@contextmanager
def timed_stage(output_dir: Path, stage: str) -> Iterator[None]:
    """Record the stage's wall seconds (also when it fails, marked as such)."""
    start = time.perf_counter()
    status = "failed"
    try:
        yield
        status = "ok"
    finally:
        record_stage(output_dir, stage, time.perf_counter() - start, status)


def record_stage(output_dir: Path, stage: str, seconds: float, status: str = "ok") -> None:
    """Set `stage`'s entry of logs/timings.json (the other stages' entries kept); a skipped
    stage keeps the last run that did its work under "worked"."""
    path = Path(output_dir) / TIMINGS_FILE
    timings = read_timings(output_dir)
    now = datetime.now(UTC)
    started = now - timedelta(seconds=max(seconds, 0.0))
    if stage == "prepare":
        # prepare is the first stage every run records (runner._run_stages: done or skipped),
        # so its start is the run's start, and the later stages of the run read it from here
        run = _stamp(started)
    else:
        run = str(timings.get("prepare", {}).get("run") or _stamp(started))
    entry: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "status": status,
        "run": run,
        "at": _stamp(now),
    }
    if status == SKIPPED:
        earlier = timings.get(stage)
        if earlier is not None and earlier.get("status") != SKIPPED:
            entry["worked"] = {k: v for k, v in earlier.items() if k != "worked"}
        elif earlier is not None and "worked" in earlier:
            entry["worked"] = earlier["worked"]
    timings[stage] = entry
    write_json(path, timings)


def read_timings(output_dir: Path) -> dict[str, dict[str, Any]]:
    """The recorded stages; a damaged file (truncated, not a JSON object) reads as empty and is
    rebuilt by the next record_stage (the times are a record, not an input: nothing depends on
    the lost ones). A damaged stage entry is left out, a damaged "worked" dropped; an older
    qpipe's entries (no "run", "at" or "worked") read as they are."""
    path = Path(output_dir) / TIMINGS_FILE
    if not path.exists():
        return {}
    try:
        timings = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        timings = None
    if not isinstance(timings, dict):
        log.warning(
            "%s is damaged (not a JSON object of stages): it is rebuilt from this run", path
        )
        return {}
    kept = {}
    for stage, entry in timings.items():
        if not _valid(entry):
            log.warning("%s: the entry of stage %r is damaged: left out", path, stage)
            continue
        if "worked" in entry and not (_valid(entry["worked"]) and entry["status"] == SKIPPED):
            log.warning("%s: the earlier run of stage %r is damaged: left out", path, stage)
            entry = {k: v for k, v in entry.items() if k != "worked"}
        kept[stage] = entry
    return kept


def _valid(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("seconds"), int | float)
        and not isinstance(entry.get("seconds"), bool)
        and isinstance(entry.get("status"), str)
        and all(isinstance(entry.get(k, ""), str) for k in ("run", "at"))
    )


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
