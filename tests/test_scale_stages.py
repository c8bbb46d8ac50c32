"""benchmarks/scale_stages.py: each stage's driver peak is the kernel's high-water mark of that
stage alone (read and reset every interval), cut where logs/timings.json records the stage."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from scale_stages import staged_run

# a "driver" that holds 300 MiB in its first stage, frees it, then holds 40 MiB in its second,
# recording each stage's end as the pipeline does; each state lasts past a few 0.2 s readings
DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    timings = Path(sys.argv[1]) / "logs" / "timings.json"
    timings.parent.mkdir(parents=True)
    def record(stage):
        done = json.loads(timings.read_text()) if timings.exists() else {}
        done[stage] = {"seconds": 1.0, "status": "ok"}
        timings.write_text(json.dumps(done))
    big = b"x" * (300 * 2**20)  # written: its pages are resident
    time.sleep(0.6)
    del big
    time.sleep(0.6)
    record("first")
    time.sleep(0.6)
    small = b"x" * (40 * 2**20)
    time.sleep(0.6)
    record("second")
    time.sleep(0.6)
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_each_stage_gets_its_own_peak_and_cpu(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "out"
    row = staged_run(
        [sys.executable, str(script), str(out)], tmp_path / "log", dict(os.environ), out
    )
    first, second = row["stages"]
    assert (first["stage"], second["stage"]) == ("first", "second")
    # the first stage held 300 MiB; the second only 40 MiB more than the bare interpreter,
    # although the first's 300 MiB would still be the process's lifetime high-water mark
    assert first["driver_peak_mb"] >= 300
    assert 40 <= second["driver_peak_mb"] < 150
    assert first["driver_cpu_s"] >= 0 and second["driver_cpu_s"] >= 0
    assert row["wait4_cpu_s"] > 0
