"""The probe's child process: the worker baseline and every model's task, one import.

`python -P -m pipeline.runtime.execute.probe_child --jobs FILE --parallel auto|N --cores N
--out FILE --parent PID --tmp DIR --imports A,B|@FILE` (started by pipeline.stages.probe_process.ProbeChild,
in a worker's environment: one BLAS/OpenMP/torch thread, glibc's malloc defaults). It may start before the
driver knows its jobs: after its imports it waits for FILE to appear.

It imports what a worker running the probed models imports (WORKER_IMPORTS and `--imports`); its peak RSS at that point is the worker
baseline, as a child that only imports measured it before. Each job (one model) then runs in
a process forked from it, up to N at once (`auto`: one per usable core that other processes
left idle while this child imported, measured from /proc/stat: `jobs_at_once`), so the
imports (2-3 CPU-s, torch and distributed) are paid once per probe instead of once per model. A fork's own peak RSS (`os.wait4`) starts
near the RSS it was forked with and grows by what the job allocates; the job's peak is the
baseline plus that growth (pages of the imported libraries the job touches for the first time
count as growth, so the estimate errs high, never low). A job past its timeout is killed
(SIGKILL) and reported as such; the forks die with this process, and this process with the
driver (PR_SET_PDEATHSIG), removing the driver's temporary dir on the way.

A job: a calibration batch of the first `CALIBRATION_FITS` fits (or of `min_fits`, when a
model batches at least that many: the calibration is then already a task of the size train
gives it), then, if the time per fit it measured asks for a bigger task of about
`task_seconds`, that task; time per fit (CPU seconds: `_timed_task`) and peak RSS are those
of the last, task-sized batch.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime.execute.child import die_with_parent
from pipeline.runtime.sizing.resources import OtherCpuMeter, own_peak_mb

CALIBRATION_FITS = 4
# what every Dask worker process has imported; `--imports` adds what the probed models' tasks
# import (pipeline.runtime.execute.task_imports: torch only for models that use it)
# (no pandas: a worker's task imports none since issue 18, and a Dask worker on its own neither;
# a real ar_qr worker peaks near 70 MiB, the baseline with pandas was 128)
WORKER_IMPORTS = ("numpy", "distributed")
POLL_S = 0.01


def save_payload(path: Path, payload: dict[str, Any]) -> None:
    """A task payload as .npz (plain arrays and JSON: no pickle). A compact payload (its
    `windows`, see tasks.task_payload) keeps them; the fits' windows are built only in `_head`,
    for the fits a batch measures, as a worker builds its task's."""
    arrays_of = ("data", "windows", "countries", "rows", "origins", "keys")
    meta = {k: v for k, v in payload.items() if k not in arrays_of}
    part = "windows" if "windows" in payload else "data"
    arrays = {f"{part}_{k}": v for k, v in payload[part].items()}
    np.savez(
        path,
        meta=np.array(json.dumps(meta)),
        countries=payload["countries"].astype(str),
        rows=payload["rows"],
        origins=payload["origins"],
        keys=np.asarray(payload["keys"]),  # raw digests (S32), or str
        **arrays,
    )


def load_payload(path: str) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as f:
        payload = json.loads(str(f["meta"]))
        payload["countries"] = f["countries"].astype(object)
        payload["rows"] = f["rows"]
        payload["origins"] = f["origins"]
        payload["keys"] = f["keys"]
        for part in ("data", "windows"):
            members = {k[len(part) + 1 :]: f[k] for k in f.files if k.startswith(f"{part}_")}
            if members:
                payload[part] = members
    return payload


def main(argv: list[str]) -> None:
    def arg(name: str) -> str:
        return argv[argv.index(name) + 1]

    running: dict[int, tuple[dict[str, Any], float]] = {}  # pid -> (job, deadline)
    parent = int(arg("--parent"))
    _die_with_driver(parent, arg("--tmp"), running)
    # what the rest of the machine uses while this child imports and the driver plans
    others = OtherCpuMeter([os.getpid(), parent])
    for module in WORKER_IMPORTS:
        importlib.import_module(module)
    for module in _model_imports(arg("--imports")):
        importlib.import_module(module)
    baseline_mb = own_peak_mb()
    jobs_path = Path(arg("--jobs"))
    while not jobs_path.exists():  # the driver writes it (atomically) once its plans are built
        time.sleep(POLL_S)
    jobs = json.loads(jobs_path.read_text())
    other_cpus = others.other_cpus()
    if arg("--parallel") == "auto":
        # the machine's CPUs less the others' (a container's cores may be fewer than the host's)
        free = None if other_cpus is None else (os.cpu_count() or 1) - other_cpus
        parallel = jobs_at_once(int(arg("--cores")), free)
    else:
        parallel = max(1, int(arg("--parallel")))
    results: dict[str, dict[str, Any]] = {}
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            running[_fork(job)] = (job, time.monotonic() + float(job["timeout_s"]))
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid:
            job, _ = running.pop(pid)
            results[job["name"]] = _result(job, status, usage, baseline_mb)
            continue
        for pid, (job, deadline) in list(running.items()):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.wait4(pid, 0)
                del running[pid]
                results[job["name"]] = {"timeout": True}
        time.sleep(POLL_S)
    out = {"baseline_mb": baseline_mb, "models": results, "parallel": parallel}
    Path(arg("--out")).write_text(json.dumps({**out, "other_cpus": other_cpus}))


def _model_imports(spec: str) -> list[str]:
    """The probed models' task imports: `A,B`, or `@FILE` when this child started before the
    driver knew its models (`probe_process.start_speculative`): FILE (a JSON list, written
    atomically) is waited for after the worker's own imports."""
    if not spec.startswith("@"):
        return list(filter(None, spec.split(",")))
    path = Path(spec[1:])
    while not path.exists():
        time.sleep(POLL_S)
    return [str(m) for m in json.loads(path.read_text())]


def jobs_at_once(cores: int, free_cpus: float | None) -> int:
    """Jobs measured at once, at most `cores` (this process's usable cores): one per CPU that
    other processes left idle (at most a quarter of it used) while this child imported
    (`OtherCpuMeter`: this child and the driver, which waits while jobs run, do not count);
    one at a time when that is unknown. A job beside another process's work measures its time
    per fit too high: on the loaded machine two jobs side by side measured it 2-33 % higher
    than one at a time (benchmarks/README.md, "The cold probe on both cores")."""
    if free_cpus is None:
        return 1
    return max(1, min(cores, math.floor(free_cpus + 0.25)))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fork(job: dict[str, Any]) -> int:
    """Run `job` in a fork of this process; its pid."""
    parent = os.getpid()
    with warnings.catch_warnings():
        # Python warns of fork with threads; the only other thread is pyarrow's jemalloc
        # background thread, and jemalloc handles fork itself (pthread_atfork)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent(signal.SIGKILL)  # not inherited across fork: this child's own request
        if os.getppid() != parent:  # this process ended before the request took effect
            return
        start_mb = _rss_mb()
        try:
            out = _measure(job)
            out["start_mb"] = start_mb
            code = 0
        except Exception:
            out = {"error": traceback.format_exc(limit=8)[-2000:]}
        Path(job["out"]).write_text(json.dumps(out))
    finally:
        os._exit(code)


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    payload = load_payload(job["payload"])
    n_all = len(payload["keys"])
    min_fits = int(job["min_fits"])
    k0 = min(n_all, max(CALIBRATION_FITS, min_fits))
    # a fit that fails here is timed like the rest (train spends that time too, and records
    # the failure where a user looks for it); the probe only says how many failed
    first = _timed_task(_head(payload, k0))
    spf = first["cost_seconds"] / k0
    k1 = int(min(n_all, max(k0, float(job["task_seconds"]) / max(spf, 1e-9))))
    last = first if k1 == k0 else _timed_task(_head(payload, k1))
    return {
        "seconds_per_fit": last["cost_seconds"] / k1,
        "fits": k1,
        "calibration_seconds_per_fit": spf,
        "failed_fits": len(last["failed"]),
    }


def _timed_task(payload: dict[str, Any]) -> dict[str, Any]:
    """One task's result with `cost_seconds`: the CPU seconds of this (one-thread) process.

    CPU time is the work itself, which a loaded machine does not inflate as it does wall time:
    sized by wall time, tasks measured on a busy machine came out tens of times too small
    (their fixed costs then ruled train), and the probe cache kept that for later runs. A task
    that used a GPU is timed by wall instead (its CPU waits for the device, so CPU time would
    leave the device's work out)."""
    from pipeline.runtime.execute.worker import run_task

    t0 = time.process_time()
    result = run_task(payload)
    cpu = time.process_time() - t0
    result["cost_seconds"] = result["seconds"] if _used_gpu() else cpu
    return result


def _used_gpu() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _result(job: dict[str, Any], status: int, usage: Any, baseline_mb: float) -> dict[str, Any]:
    try:
        out = json.loads(Path(job["out"]).read_text())
    except (OSError, ValueError):
        out = {"error": f"the probe's fork exited with {os.waitstatus_to_exitcode(status)}"}
    if "error" not in out:
        grown = max(usage.ru_maxrss / 1024.0 - out.pop("start_mb"), 0.0)
        out["peak_mb"] = baseline_mb + grown
        out["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the whole job (for the record)
    return out


def _die_with_driver(parent: int, tmp: str, running: dict[int, Any]) -> None:
    """End this child (and its forks) with the driver, removing the driver's temporary dir for
    it (a driver killed by SIGKILL cannot): SIGTERM on the parent's death, and a check for a
    parent gone before that request took effect."""

    def leave(*_: object) -> None:
        for pid in list(running):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(143)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it ends this child
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:
        leave()


def _head(payload: dict[str, Any], k: int) -> dict[str, Any]:
    """The payload of its first `k` fits. A compact payload stays compact (only the grid rows
    and months those fits read), so the measured batch builds its windows as a worker's task
    does and its peak holds those k fits' windows, not the whole group's."""
    sub = dict(payload)
    sub["keys"] = payload["keys"][:k]
    sub["countries"], sub["rows"] = payload["countries"][:k], payload["rows"][:k]
    sub["origins"] = payload["origins"][:k]
    if "windows" in payload:
        from pipeline.runtime.fits.fit_windows import CountryWindows

        sub["windows"] = CountryWindows.from_part(payload["windows"]).part(np.arange(k))
    else:
        sub["data"] = {n: v[:k] for n, v in payload["data"].items()}
    return sub


if __name__ == "__main__":
    main(sys.argv[1:])
