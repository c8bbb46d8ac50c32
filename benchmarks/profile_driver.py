"""Run `python -m pipeline ...` under a profile of the driver's CPU, by thread.

The main thread's calls go to a cProfile timed by `time.thread_time` (CPU, not wall: a
shared machine stretches waits, not work). The driver's other threads (the Dask client's
event loop, which receives the results and runs the comms; the progress bar; a lane's
driver thread) are not in that profile: a sampler reads each thread's CPU seconds from
/proc every 0.2 s and reports their totals by Python thread name.

Usage: python benchmarks/profile_driver.py PREFIX stage train --model ar_qr --params p.yaml
writes PREFIX.prof (pstats) and PREFIX.threads.json ({thread name: CPU seconds}).
"""

from __future__ import annotations

import cProfile
import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each live thread of this process, by native thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return out


def main() -> None:
    prefix = Path(sys.argv[1])
    sys.argv = ["pipeline", *sys.argv[2:]]
    seen: dict[int, tuple[str, float]] = {}
    stop = threading.Event()

    def sample() -> None:
        while True:
            names = {t.native_id: t.name for t in threading.enumerate()}
            for tid, cpu in thread_cpu().items():
                name = "main" if tid == os.getpid() else names.get(tid, f"native-{tid}")
                seen[tid] = (seen.get(tid, (name, 0.0))[0] if tid in seen else name, cpu)
            if stop.wait(0.2):
                return

    sampler = threading.Thread(target=sample, name="profile-sampler", daemon=True)
    sampler.start()
    profile = cProfile.Profile(time.thread_time)
    code = 0
    profile.enable()
    try:
        runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        profile.disable()
        stop.set()
        sampler.join()
        profile.dump_stats(f"{prefix}.prof")
        totals: dict[str, float] = {}
        for name, cpu in seen.values():
            totals[name] = round(totals.get(name, 0.0) + cpu, 3)
        usage = os.times()
        totals["process (user + system)"] = round(usage.user + usage.system, 3)
        Path(f"{prefix}.threads.json").write_text(json.dumps(totals, indent=1) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
