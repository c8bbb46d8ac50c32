"""Wall time of each stage of the last run, in `{output_dir}/logs/timings.json`.

Kept under logs/ (not a DVC output) because it changes every run; `python -m pipeline results`
reads it (`read_timings`) for the results page's cost section (evaluation/results.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.io import read_json, write_json

TIMINGS_FILE = Path("logs/timings.json")
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
    """Set `stage`'s entry of logs/timings.json (the other stages' entries kept)."""
    path = Path(output_dir) / TIMINGS_FILE
    timings = read_timings(output_dir)
    timings[stage] = {"seconds": round(seconds, 3), "status": status}
    write_json(path, timings)


def read_timings(output_dir: Path) -> dict[str, dict[str, float | str]]:
    """The recorded stages; a damaged file (truncated, not a JSON object) reads as empty and is
    rebuilt by the next record_stage (the times are a record, not an input: nothing depends on
    the lost ones)."""
    path = Path(output_dir) / TIMINGS_FILE
    if not path.exists():
        return {}
    try:
        timings = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        timings = None
    if isinstance(timings, dict) and all(isinstance(v, dict) for v in timings.values()):
        return timings
    log.warning("%s is damaged (not a JSON object of stages): it is rebuilt from this run", path)
    return {}
