"""Wall time of each stage of the last run, in `{output_dir}/logs/timings.json`.

Kept under logs/ (not a DVC output) because it changes every run; RESULTS.md reads it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.io import read_json, write_json

TIMINGS_FILE = Path("logs/timings.json")


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
    path = Path(output_dir) / TIMINGS_FILE
    timings = read_json(path) if path.exists() else {}
    timings[stage] = {"seconds": round(seconds, 3), "status": status}
    write_json(path, timings)


def read_timings(output_dir: Path) -> dict[str, dict[str, float | str]]:
    path = Path(output_dir) / TIMINGS_FILE
    return read_json(path) if path.exists() else {}
