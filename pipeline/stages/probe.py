"""`probe`: measure one representative task per model in a fresh worker-like process; plan the cluster.

Each measurement runs in a child process started like a Dask worker (same imports: the
pipeline, numpy, pandas, torch, distributed; one BLAS/OpenMP/torch thread). Its exact peak
RSS comes from `os.wait4` (ru_maxrss of that child alone). A child that only imports gives
the worker baseline. The child first times a small calibration batch, sizes a task to
about `runtime.task_seconds` of work (at least `Adapter.batch_fits` fits: a model that batches
fits is measured on a task of the size train gives it), and runs it, so the peak is that of a
real task. A model with `Adapter.probe_params` runs with lighter parameters (ensemble_nn: a
few epochs) and its time per fit is scaled to the real ones by the factor they return.

`dry_run` (the plan as text) lives in pipeline.stages.dry_run.

memory_limit = baseline + largest task peak above baseline + mem_probe_fudge_mb, rounded up
to 256 MiB. The number of workers is not the probe's business: train derives it from these
measurements and the live machine (`pipeline.runtime.sizing.plan.plan_from_measurements`), so the
probe's outputs hold nothing about the machine's size and a new machine reruns no stage.

`probe.json` (DVC metrics, train's dependency) holds only what a task needs, rounded (threads
and memory limit per worker, fits per model), so it is byte-identical while those are; the
time-derived numbers (seconds per fit) and exact peaks go to `probe_measurements.json`, which
`load_plan` merges back in when present. Fits per task only change how fits are batched, never
a forecast (batched solvers are batch-independent), so they need not invalidate `train`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError, StudyConfig
from pipeline.io import write_json
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.fit_groups import FitGroup
from pipeline.runtime.fits.shared_plan import fit_groups
from pipeline.runtime.fits.tasks import task_payload
from pipeline.runtime.sizing.plan import (
    MEASUREMENTS_FILE,
    PROBE_FILE,
    ModelPlan,
    Plan,
    ProbeError,
    plan_from_measurements,
    round_up_mb,
    worker_environment,
)
from pipeline.runtime.sizing.probe_cache import (
    cached_measurement,
    code_fingerprint,
    machine_identity,
)
from pipeline.runtime.sizing.timeouts import PROBE_TIMEOUT_S, probe_timeout

log = logging.getLogger("pipeline.probe")

CALIBRATION_FITS = 4
# what a worker process has imported once it ran a task (the probe child mirrors it)
WORKER_IMPORTS = ("numpy", "pandas", "torch", "distributed", "pipeline.runtime.execute.worker")


def run_probe(config: StudyConfig, models: list[str] | None = None) -> Plan:
    """Measure every enabled model (or `models`), write probe.json + probe_measurements.json."""
    from pipeline.runtime.execute.model_check import check_user_models
    from pipeline.stages.prepare import load_panel

    panel = load_panel(config.output_dir)
    names = list(models) if models is not None else list(config.models.enabled())
    check_user_models(config, panel, names)  # before any child process or cluster
    reprobe = config.runtime.reprobe
    baseline = cached_measurement(
        baseline_inputs(), lambda: measure_child(["--baseline"])[0], ("peak_mb",), reprobe
    )["peak_mb"]
    log.info("probe: worker baseline %.0f MiB", baseline)
    results: dict[str, tuple[int, dict[str, Any], list[FitGroup]]] = {}
    for name in names:
        adapter = adapter_for(config, name)
        groups = fit_groups(panel, config, adapter)
        n_fits = sum(len(g) for g in groups)
        if n_fits == 0:
            raise ProbeError(f"model {name} has no fit with enough data in this study")
        results[name] = (n_fits, probe_model(config, name, groups), groups)
        log.info(
            "probe: %s %.4f s/fit, peak %.0f MiB (%d fits per task)",
            name,
            results[name][1]["seconds_per_fit"],
            results[name][1]["peak_mb"],
            results[name][1]["fits"],
        )
    largest = max(max(r[1]["peak_mb"] - baseline for r in results.values()), 0.0)
    limit = round_up_mb(baseline + largest + config.runtime.mem_probe_fudge_mb)
    measured = {
        name: ModelPlan(n_fits, seconds_per_fit=meas["seconds_per_fit"], peak_mb=meas["peak_mb"])
        for name, (n_fits, meas, _) in results.items()
    }
    # sized for this machine only to report it (and fail early when not one worker fits);
    # train sizes the cluster again from these measurements on the machine it runs on
    plan = plan_from_measurements(
        config, limit, measured, {n: r[2] for n, r in results.items()}, baseline_mb=baseline
    )
    log.info(
        "probe: memory limit %d MiB per worker; here %d workers (budget %.0f MiB)",
        limit,
        plan.n_workers,
        plan.ram_budget_mb,
    )
    write_json(config.output_dir / PROBE_FILE, plan.rounded())
    write_json(config.output_dir / MEASUREMENTS_FILE, plan.measurements())
    _summary(limit, plan, {name: r[1]["seconds_per_fit"] for name, r in results.items()})
    return plan


def _summary(limit: int, plan: Plan, seconds_per_fit: dict[str, float]) -> None:
    """The probe in one terminal line (its details above go to the run log only)."""
    from pipeline.runtime.ui.logs import current_log

    per_fit = ", ".join(f"{name} {spf:.2g}" for name, spf in seconds_per_fit.items())
    where = current_log()
    logging.getLogger("pipeline").info(
        "probe: %d MiB per worker, %d worker%s here; s/fit %s%s",
        limit,
        plan.n_workers,
        "" if plan.n_workers == 1 else "s",
        per_fit,
        f" (details: {where})" if where else "",
    )


def baseline_inputs() -> dict[str, Any]:
    """What the worker baseline (an idle worker-like process) depends on: the probe cache key."""
    return {"kind": "baseline", "imports": list(WORKER_IMPORTS), "machine": _machine()}


def probe_model(config: StudyConfig, name: str, groups: list[FitGroup]) -> dict[str, Any]:
    """Run a calibration batch and a task-sized batch of the largest group in a child process,
    or reuse this machine's measurement of the same task (pipeline.runtime.sizing.probe_cache)."""
    adapter = adapter_for(config, name)
    params = adapter.params(config)
    scale = 1.0
    if adapter.probe_params is not None:
        params, scale = adapter.probe_params(params)
    group = max(groups, key=lambda g: (int(np.prod(g.fit_shapes()["X"][0])), len(g)))
    task_seconds = config.runtime.task_seconds / scale
    min_fits = min(len(group), adapter.batch_fits)
    inputs = {
        "kind": "model",
        "model": name,
        "version": adapter.version,
        "params": params,
        "scale": scale,
        "payload": adapter.payload or {},
        "quantiles": list(config.data.quantiles),
        "seed": config.seed,
        # the probed task's shape: the group's fits, each fit's arrays, horizons, sizing
        "task": {
            "fits": len(group),
            "arrays": {k: [list(s), t] for k, (s, t) in sorted(group.fit_shapes().items())},
            "countries": int(group.countries.shape[1]),
            "horizons": [int(h) for h in group.horizons],
            "task_seconds": task_seconds,
            "min_fits": min_fits,
        },
        "code": code_fingerprint(),
        "machine": _machine(),
    }
    return cached_measurement(
        inputs,
        lambda: _measure_model(config, name, group, params, scale, task_seconds, min_fits),
        ("seconds_per_fit", "peak_mb", "fits"),
        config.runtime.reprobe,
    )


def _machine() -> dict[str, Any]:
    return machine_identity(worker_environment({}))


def _measure_model(
    config: StudyConfig,
    name: str,
    group: FitGroup,
    params: dict[str, Any],
    scale: float,
    task_seconds: float,
    min_fits: int,
) -> dict[str, Any]:
    payload = task_payload(
        group,
        np.arange(len(group)),
        params=params,
        quantiles=config.data.quantiles,
        seed=config.seed,
        extra=adapter_for(config, name).payload,
    )
    out, _ = measure_child(
        # a model that batches fits is measured on a task of that size (time and peak)
        ["--task-seconds", str(task_seconds), "--min-fits", str(min_fits)],
        timeout_s=probe_timeout(config.runtime, name),
        model=name,
        payload=payload,
    )
    out["seconds_per_fit"] = out["seconds_per_fit"] * scale
    return out


def measure_child(
    args: list[str],
    timeout_s: float = PROBE_TIMEOUT_S,
    model: str | None = None,
    payload: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], float]:
    """Run `python -m pipeline.stages.probe ARGS` like a worker (on `payload`, a task, when
    given); return its JSON and wall time.

    peak_mb is the child's own ru_maxrss from os.wait4 (KiB on Linux), exact and unpolled.
    The child dies with the driver (PR_SET_PDEATHSIG) and then removes its temporary dir
    (payload and result); past `timeout_s` it is killed and `model` named in a ConfigError.
    """
    # like a worker (pipeline.runtime.execute.cluster.worker_environ): one thread, glibc's malloc defaults
    env = worker_environment(os.environ)
    # the child imports what this process imports (this copy of the package, a user model's
    # module): its sys.path is ours, and -P keeps the working directory off it unless it is on
    # ours (under the qpipe command it is not, so a stray pipeline.py there cannot run)
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p == "" else p for p in sys.path)
    with tempfile.TemporaryDirectory(prefix="qpipe-probe-") as tmp:
        result_path = Path(tmp) / "result.json"
        if payload is not None:
            _save_payload(Path(tmp) / "payload.npz", payload)
            args = ["--task", str(Path(tmp) / "payload.npz"), *args]
        t0 = time.perf_counter()
        cmd = [sys.executable, "-P", "-m", "pipeline.stages.probe", *args]
        cmd += ["--out", str(result_path)]
        proc = subprocess.Popen([*cmd, "--parent", str(os.getpid()), "--tmp", tmp], env=env)
        try:
            status, usage = _wait(proc, timeout_s)
        finally:
            if proc.returncode is None:  # interrupted or past its timeout: it goes too
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
        if status is None:
            key = f"models.{model}" if model else "runtime.task_timeout_s"
            raise ConfigError(
                key,
                f"a model whose probe task finishes within runtime.task_timeout_s = {timeout_s:g} s "
                "(raise it for this model with runtime.task_timeout_s_by_model)",
                f"still running after {timeout_s:g} s: stopped",
            )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise ProbeError(f"probe child {' '.join(args)} exited with {proc.returncode}")
        out = json.loads(result_path.read_text() or "{}")
    out["peak_mb"] = usage.ru_maxrss / 1024.0
    return out, wall


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int | None, Any]:
    """os.wait4 the child until `timeout_s`: (status, rusage), or (None, None) past it."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, usage
        if time.monotonic() > deadline:
            return None, None
        time.sleep(0.02)


def _save_payload(path: Path, payload: dict[str, Any]) -> None:
    meta = {k: v for k, v in payload.items() if k not in ("data", "countries", "rows", "origins")}
    arrays = {f"data_{k}": v for k, v in payload["data"].items()}
    np.savez(
        path,
        meta=np.array(json.dumps(meta)),
        countries=payload["countries"].astype(str),
        rows=payload["rows"],
        origins=payload["origins"],
        **arrays,
    )


def _load_payload(path: str) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as f:
        payload = json.loads(str(f["meta"]))
        payload["countries"] = f["countries"].astype(object)
        payload["rows"] = f["rows"]
        payload["origins"] = f["origins"]
        payload["data"] = {k[5:]: f[k] for k in f.files if k.startswith("data_")}
    return payload


def _child(argv: list[str]) -> None:
    import importlib

    _die_with_driver(int(argv[argv.index("--parent") + 1]), argv[argv.index("--tmp") + 1])
    for module in WORKER_IMPORTS:
        importlib.import_module(module)
    out_path = argv[argv.index("--out") + 1]
    result: dict[str, Any] = {}
    if "--task" in argv:
        from pipeline.runtime.execute.worker import run_task

        payload = _load_payload(argv[argv.index("--task") + 1])
        task_seconds = float(argv[argv.index("--task-seconds") + 1])
        n_all = len(payload["keys"])
        k0 = min(CALIBRATION_FITS, n_all)
        first = run_task(_head(payload, k0))
        spf = first["seconds"] / k0
        min_fits = int(argv[argv.index("--min-fits") + 1]) if "--min-fits" in argv else 1
        k1 = int(min(n_all, max(k0, min_fits, task_seconds / max(spf, 1e-9))))
        second = run_task(_head(payload, k1))
        if second["failed"]:
            raise RuntimeError(f"probe task failed: {second['failed'][0]['traceback']}")
        result = {
            "seconds_per_fit": second["seconds"] / k1,
            "fits": k1,
            "calibration_seconds_per_fit": spf,
        }
    Path(out_path).write_text(json.dumps(result))


def _die_with_driver(parent: int, tmp: str) -> None:
    """End this child with the driver, removing the driver's temporary dir for it (a driver
    killed by SIGKILL cannot): SIGTERM on the parent's death, and a check for a parent gone
    before that request took effect."""
    import shutil
    import signal

    from pipeline.runtime.execute.child import die_with_parent

    def leave(*_: object) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(143)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it ends this child
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:
        leave()


def _head(payload: dict[str, Any], k: int) -> dict[str, Any]:
    sub = dict(payload)
    sub["keys"] = payload["keys"][:k]
    sub["countries"], sub["rows"] = payload["countries"][:k], payload["rows"][:k]
    sub["origins"] = payload["origins"][:k]
    sub["data"] = {n: v[:k] for n, v in payload["data"].items()}
    return sub


if __name__ == "__main__":
    _child(sys.argv[1:])
