"""The rw study at one size, stage by stage: `python benchmarks/bench_scale.py --stages N`.

One `python -m pipeline run` of the rw study of N countries (N x 912 fits; `bench_scale.py`'s
RW_ONLY) in a fresh output dir, then a no-op rerun in the same dir and `monitor` on the store.
While the run works, a thread reads every 0.2 s the driver's VmHWM and then resets it
(`/proc/<pid>/clear_refs` "5"), so each reading is the kernel's peak of that interval, not a
sample of RSS: the largest reading within a stage is the driver's peak in that stage. A stage
ends when `logs/timings.json` records it (the run writes it at each stage's end); the driver's
own CPU (utime + stime from /proc) is read at the same moments. The run's processes beside the
driver (the cluster's workers and nannies, the probe's child, assemble's fork) are listed with
their largest VmHWM, and the machine's smallest MemAvailable while the run worked is kept (the
machine is shared: that is what is left for everyone).

Afterwards: the output dir's bytes per folder (the progress store, the fit cache's shards, the
forecast tables), the plan cache's bytes, and the whole command's wait4: the user + system CPU
of the driver and every process it reaped. (Its ru_maxrss is kept in the JSON but is not the
driver's peak: the resets above lower the driver's own high-water mark, so it is the largest of
the reaped processes' peaks and the driver's last interval.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_hwm(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _timings(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "logs" / "timings.json").read_text())
    except (OSError, ValueError):
        return {}


class StageMeter:
    """The driver's per-interval peak and CPU, cut into stages at each record in timings.json."""

    def __init__(self, pid: int, out: Path, every_s: float = 0.2) -> None:
        self.pid, self.out, self.every_s = pid, out, every_s
        self.known = _timings(out)  # what an earlier run in the same dir recorded
        self.stages: list[dict[str, Any]] = []
        self.others: dict[int, dict[str, Any]] = {}
        self.min_available_mb = _mem_available_mb()
        self._peak_kb = 0
        self._cpu0 = _cpu_s(pid) or 0.0
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        _reset_hwm(pid)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def _sample(self) -> None:
        hwm = _status_kb(self.pid, "VmHWM:")
        if hwm is None:
            return
        _reset_hwm(self.pid)
        self._peak_kb = max(self._peak_kb, hwm)
        self.min_available_mb = min(self.min_available_mb, _mem_available_mb())
        self._others()
        now = _timings(self.out)
        for name, rec in now.items():
            if self.known.get(name) != rec:
                self._cut(name, rec)
        self.known = now

    def _others(self) -> None:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return
        for kid in kids:
            hwm = _status_kb(kid.pid, "VmHWM:")
            if hwm is None:
                continue
            row = self.others.setdefault(kid.pid, {"peak_mb": 0.0, "cmd": ""})
            if not row["cmd"]:
                with contextlib.suppress(psutil.Error):
                    row["cmd"] = " ".join(kid.cmdline())[:120]
            row["peak_mb"] = max(row["peak_mb"], hwm / 1024.0)

    def _cut(self, name: str, rec: dict[str, Any]) -> None:
        cpu = _cpu_s(self.pid)
        t = time.perf_counter()
        self.stages.append(
            {
                "stage": name,
                "seconds": rec.get("seconds"),
                "status": rec.get("status"),
                "driver_peak_mb": self._peak_kb / 1024.0,
                "driver_cpu_s": None if cpu is None else cpu - self._cpu0,
                "since_last_cut_s": t - self._t0,
            }
        )
        self._peak_kb = 0
        if cpu is not None:
            self._cpu0 = cpu
        self._t0 = t

    def stop(self) -> None:
        """Before the driver is reaped: its last interval and its CPU after the last stage."""
        self._stop.set()
        self._thread.join()
        self._sample()
        self.tail = {
            "driver_peak_mb": self._peak_kb / 1024.0,
            "driver_cpu_s": (_cpu_s(self.pid) or self._cpu0) - self._cpu0,
        }


def staged_run(cmd: list[str], log_path: Path, env: dict[str, str], out: Path) -> dict[str, Any]:
    """Run `cmd` (a `python -m pipeline run` into `out`) with a StageMeter on its driver."""
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        meter = StageMeter(proc.pid, out)
        # wait for the exit without reaping it, so /proc still shows the driver's last state
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        meter.stop()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: see {log_path}")
    others = sorted(meter.others.values(), key=lambda r: -r["peak_mb"])
    return {
        "wall_s": wall,
        "stages": meter.stages,
        "after_last_stage": meter.tail,
        "others_peak_mb": others[:8],
        "min_mem_available_mb": meter.min_available_mb,
        "wait4_maxrss_mb": usage.ru_maxrss / 1024.0,
        "wait4_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_stages(n: int, base: Path, cache: Path) -> dict[str, Any]:
    from bench_scale import rw_command

    out = base / f"rw{n}"
    cmd = rw_command(n, out)
    env = {**os.environ, "QPIPE_PROBE_CACHE": str(cache)}
    fits = n * 912  # N countries x 228 origins x 4 horizons (rw: every fit exists)
    first = staged_run(cmd, base / f"rw{n}.log", env, out)
    print(json.dumps({"first": first}), flush=True)
    sizes = {p.name: tree_bytes(p) for p in sorted(out.iterdir()) if p.is_dir()}
    store = sum(p.stat().st_size for p in (out / "progress").glob("progress.sqlite*"))
    noop = staged_run(cmd, base / f"rw{n}-noop.log", env, out)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", "monitor", "--output-dir", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    monitor_s = time.perf_counter() - t0
    return {
        "countries": n,
        "fits": fits,
        "first": first,
        "noop": noop,
        "output_dir_bytes": sizes,
        "progress_store_bytes": store,
        "progress_bytes_per_fit": store / fits,
        "plan_cache_bytes": tree_bytes(cache / "plans"),
        "probe_cache_bytes": tree_bytes(cache),
        "monitor_s": monitor_s,
    }
