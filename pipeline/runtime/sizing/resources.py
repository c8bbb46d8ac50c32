"""What this process may use: CPUs (affinity mask, capped by a cgroup CPU quota) and memory
(capped by a cgroup memory limit). Containers report the host's cores and RAM through
os.cpu_count and psutil; the cgroup files say what the container really gets. The planner
reads them at train time, on the machine that runs the study."""

from __future__ import annotations

import ctypes
import math
import os
import resource

# cgroup v2 (unified) files first, then v1's
_CPU_MAX = "/sys/fs/cgroup/cpu.max"
_CPU_V1 = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")
_MEM_MAX = "/sys/fs/cgroup/memory.max"
_MEM_CURRENT = "/sys/fs/cgroup/memory.current"
_MEM_V1 = (
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    "/sys/fs/cgroup/memory/memory.usage_in_bytes",
)
_V1_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge number


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_quota() -> float | None:
    """CPUs the cgroup quota allows (quota / period), or None when unlimited or absent."""
    parts = read_text(_CPU_MAX).split()
    if len(parts) == 2 and parts[0] != "max":
        return int(parts[0]) / int(parts[1])
    quota, period = (read_text(p).strip() for p in _CPU_V1)
    if quota.lstrip("-").isdigit() and period.isdigit() and int(quota) > 0:
        return int(quota) / int(period)
    return None


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded up)."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_memory() -> tuple[int, int] | None:
    """(limit, current usage) in bytes of this process's memory cgroup, or None if unlimited."""
    limit, current = read_text(_MEM_MAX).strip(), read_text(_MEM_CURRENT).strip()
    if not limit.isdigit():
        limit, current = (read_text(p).strip() for p in _MEM_V1)
        if not limit.isdigit() or int(limit) >= _V1_UNLIMITED:
            return None
    return int(limit), int(current) if current.isdigit() else 0


def total_memory_bytes() -> int:
    """Physical memory, capped by the cgroup memory limit."""
    total = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    )
    cg = cgroup_memory()
    if cg is not None:
        total = min(total, cg[0]) if total else cg[0]
    return total


def available_memory_bytes() -> int:
    """Memory a new process may still take: the host's available memory, capped by what the
    cgroup limit leaves (limit - usage)."""
    import psutil

    available = int(psutil.virtual_memory().available)
    cg = cgroup_memory()
    if cg is not None:
        available = min(available, max(0, cg[0] - cg[1]))
    return available


def release_free_memory() -> None:
    """Hand the free memory the allocators keep back to the OS: Arrow's memory pool (mimalloc
    or jemalloc keep freed pages for reuse) and the C heap (glibc's `malloc_trim`; elsewhere a
    no-op). For the run's stage boundaries, where what one stage freed would otherwise stay in
    the process under the next stage's working set.

    Memory freed by the driver's other threads (Dask's comms: each has its own malloc arena)
    stays in this process and is not reused by the main thread's next stage: after train at
    1M fits that is about 300 MB on top of what assemble then allocates; Arrow's pool kept
    another 150 MB of train's forecast and progress tables."""
    import sys

    pa = sys.modules.get("pyarrow")  # never imported for this: nothing to release without it
    if pa is not None:
        pa.default_memory_pool().release_unused()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def own_peak_mb() -> float:
    """This process's own peak RSS (MiB) since it started. Not getrusage's ru_maxrss: Linux
    carries it across exec, so a worker or child spawned by a large process (a driver at a big
    study, a test runner) would start at that process's peak; VmHWM is this image's alone."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class OtherCpuMeter:
    """CPUs that processes other than `pids` used since the meter was made: /proc/stat's busy
    time (all but idle and iowait; steal counts as busy, a core the host took) less what
    `pids` (and the children they reaped) used. Unlike the load average, it is exact over the
    interval and does not lag by a minute, and it does not count this run's own processes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._start = self._sample()

    def _sample(self) -> tuple[int, int, int] | None:
        """(busy ticks, total ticks, the pids' ticks), or None without /proc (not Linux)."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
            own = 0
            for pid in self.pids:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2 :].split()
                own += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            return None
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks), own

    def other_cpus(self) -> float | None:
        """Average CPUs busy with other processes since the start (None: unknown)."""
        end = self._sample()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        busy, total, own = (b - a for a, b in zip(self._start, end, strict=True))
        cpus = os.cpu_count() or 1
        return max(0.0, cpus * (busy - own) / total)
