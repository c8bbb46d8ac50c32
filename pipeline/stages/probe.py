"""`probe`: measure one representative task per model in a fresh worker-like process; plan the cluster.

The measurements run in ONE child process started like a Dask worker (same imports: the
pipeline, numpy, torch for the models that use it, distributed; one BLAS/OpenMP/torch thread): its peak RSS after
the imports is the worker baseline, and each model's task runs in a process forked from it
(models measured side by side on the usable cores, the imports paid once: 2-3 CPU-s each
before; pipeline.runtime.execute.probe_child). A job times a calibration batch, sizes a task
to about `runtime.task_seconds` of work (at least `Adapter.batch_fits` fits: a model that
batches fits is measured on a task of the size train gives it), and runs it, so the peak is
that of a real task (exact: `os.wait4`). A model with `Adapter.probe_params` runs with lighter
parameters (ensemble_nn: a few epochs) and its time per fit is scaled to the real ones by the
factor they return. Measurements this machine already made for the same task are reused
(pipeline.runtime.sizing.probe_cache); only the others start the child.

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
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import ConfigError, StudyConfig
from pipeline.io import write_json
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.execute.probe_child import save_payload
from pipeline.runtime.execute.task_imports import task_imports
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
)
from pipeline.runtime.sizing.probe_cache import code_fingerprint, lookup, remember
from pipeline.runtime.sizing.timeouts import PROBE_TIMEOUT_S, probe_timeout
from pipeline.stages.probe_process import ProbeChild, baseline_inputs, machine, take_early

log = logging.getLogger("pipeline.probe")


def run_probe(config: StudyConfig, models: list[str] | None = None) -> Plan:
    """Measure every enabled model (or `models`), write probe.json + probe_measurements.json."""
    from pipeline.data.prepared import load_panel_columns
    from pipeline.runtime.execute.model_check import check_user_models

    panel = load_panel_columns(config.output_dir)
    names = list(models) if models is not None else list(config.models.enabled())
    check_user_models(config, panel, names)  # before any child process or cluster
    reprobe = config.runtime.reprobe
    jobs: dict[str, ProbeJob] = {}
    groups: dict[str, list[FitGroup]] = {}
    # what this machine measured before is reused; the rest is measured in ONE child, started
    # as soon as something must be measured: it imports while the plans below are built
    imports = task_imports(config, names)
    baseline_key = baseline_inputs(imports)
    cached: dict[str, dict[str, Any] | None] = {}
    fresh: dict[str, dict[str, Any]] = {}
    with take_early(imports) as child:
        old_baseline = None if reprobe else lookup(baseline_key, ("peak_mb",))
        if old_baseline is None:
            child.start()
        for name in names:
            groups[name] = fit_groups(panel, config, adapter_for(config, name))
            if sum(len(g) for g in groups[name]) == 0:
                raise ProbeError(f"model {name} has no fit with enough data in this study")
            jobs[name] = probe_job(config, name, groups[name])
            cached[name] = None if reprobe else lookup(jobs[name].inputs, MODEL_FIELDS)
            if cached[name] is None:
                child.start()
        todo = [jobs[n] for n in names if cached[n] is None]
        if todo or old_baseline is None:
            baseline_mb, fresh = measure_child(config, todo, child)
            if old_baseline is None:
                remember(baseline_key, {"peak_mb": baseline_mb})
            for job in todo:
                remember(job.inputs, fresh[job.name])
    baseline = (old_baseline or {"peak_mb": baseline_mb})["peak_mb"]
    log.info("probe: worker baseline %.0f MiB", baseline)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        results[name] = cached.get(name) or fresh[name]
        log.info(
            "probe: %s %.4f s/fit, peak %.0f MiB (%d fits per task)",
            name,
            results[name]["seconds_per_fit"],
            results[name]["peak_mb"],
            results[name]["fits"],
        )
    largest = max(max(r["peak_mb"] - baseline for r in results.values()), 0.0)
    limit = round_up_mb(baseline + largest + config.runtime.mem_probe_fudge_mb)
    measured = {
        name: ModelPlan(
            sum(len(g) for g in groups[name]),
            seconds_per_fit=meas["seconds_per_fit"],
            peak_mb=meas["peak_mb"],
        )
        for name, meas in results.items()
    }
    # sized for this machine only to report it (and fail early when not one worker fits);
    # train sizes the cluster again from these measurements on the machine it runs on
    plan = plan_from_measurements(config, limit, measured, groups, baseline_mb=baseline)
    log.info(
        "probe: memory limit %d MiB per worker; here %d workers (budget %.0f MiB)",
        limit,
        plan.n_workers,
        plan.ram_budget_mb,
    )
    write_json(config.output_dir / PROBE_FILE, plan.rounded())
    write_json(config.output_dir / MEASUREMENTS_FILE, plan.measurements())
    _summary(limit, plan, {name: r["seconds_per_fit"] for name, r in results.items()})
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


MODEL_FIELDS = ("seconds_per_fit", "peak_mb", "fits")


@dataclass
class ProbeJob:
    """One model's measurement: its cache key (`inputs`) and what the child needs to run it."""

    name: str
    inputs: dict[str, Any]
    group: FitGroup  # its task: the first fits of this group
    params: dict[str, Any]
    scale: float  # the probed time per fit x scale = the real one (Adapter.probe_params)
    task_seconds: float
    min_fits: int
    timeout_s: float


def probe_job(config: StudyConfig, name: str, groups: list[FitGroup]) -> ProbeJob:
    """A calibration batch and a task-sized batch of the model's largest group, and the key
    this machine's measurement of the same task is cached under
    (pipeline.runtime.sizing.probe_cache)."""
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
        "machine": machine(),
    }
    timeout_s = probe_timeout(config.runtime, name)
    return ProbeJob(name, inputs, group, params, scale, task_seconds, min_fits, timeout_s)


def measure_child(
    config: StudyConfig, jobs: list[ProbeJob], child: ProbeChild
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Measure the worker baseline and every job in `child` (started here if it is not yet):
    (baseline MiB, {model: {seconds_per_fit, peak_mb, fits, ...}}).

    The child's peak RSS after its imports is the baseline. It measures each job in a process
    forked from itself (side by side on the cores other processes leave idle:
    `probe_child.jobs_at_once`), so the imports are paid once, not once per model; a job's
    peak is the baseline plus what its
    fork's RSS grew by (exact: `os.wait4`). A job past its timeout is killed and its model
    named in a ConfigError; the child and its forks die with the driver (PR_SET_PDEATHSIG) and
    remove their temporary dir.
    """
    child.start()
    assert child.proc is not None
    specs = []
    for i, job in enumerate(jobs):
        path = child.tmp / f"payload-{i}.npz"
        # built only for what is measured: a reused measurement needs no task arrays
        payload = task_payload(
            job.group,
            np.arange(len(job.group)),
            params=job.params,
            quantiles=config.data.quantiles,
            seed=config.seed,
            extra=adapter_for(config, job.name).payload,
            compact=True,  # as train sends a worker its task: the child builds the windows
        )
        save_payload(path, payload)
        specs.append(
            {
                "name": job.name,
                "payload": str(path),
                "task_seconds": job.task_seconds,
                "min_fits": job.min_fits,
                "timeout_s": job.timeout_s,
                "out": str(child.tmp / f"result-{i}.json"),
            }
        )
    staging = child.tmp / "jobs.json.part"
    staging.write_text(json.dumps(specs))
    staging.replace(child.tmp / "jobs.json")  # whole, or not there yet: the child waits for it
    # the child stops a job past its own timeout; this bound only catches a stuck child
    timeout_s = PROBE_TIMEOUT_S + sum(job.timeout_s for job in jobs)
    status, _ = _wait(child.proc, timeout_s)
    if status is None:
        raise ProbeError(f"probe child still running after {timeout_s:g} s: stopped")
    if child.proc.returncode != 0:
        raise ProbeError(f"probe child exited with {child.proc.returncode}")
    out = json.loads((child.tmp / "result.json").read_text())
    others = out.get("other_cpus")
    log.info(
        "probe: %d job(s) at a time (other processes used %s CPUs meanwhile)",
        out.get("parallel", 1),
        "?" if others is None else f"{others:.2f}",
    )
    measured = {}
    for job in jobs:
        got = out["models"][job.name]
        if got.get("timeout"):
            raise ConfigError(
                f"models.{job.name}",
                f"a model whose probe task finishes within runtime.task_timeout_s = "
                f"{job.timeout_s:g} s (raise it for this model with "
                "runtime.task_timeout_s_by_model)",
                f"still running after {job.timeout_s:g} s: stopped",
            )
        if "error" in got:
            raise ProbeError(f"probe of {job.name} failed: {got['error']}")
        if got.get("failed_fits"):
            log.warning(
                "probe: %d of the %d fits %s ran for its measurement failed; train tries them "
                "again and records what fails (logs/errors, forecasts/missing.parquet)",
                got["failed_fits"],
                got["fits"],
                job.name,
            )
        got["seconds_per_fit"] = got["seconds_per_fit"] * job.scale
        measured[job.name] = got
    return out["baseline_mb"], measured


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
