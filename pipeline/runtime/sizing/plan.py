"""The cluster plan: how many workers, how much memory each, how many fits per task.

Pure sizing arithmetic shared by `probe` (which measures), `train` (which starts a cluster from
the plan) and `--dry-run` (which prints it). Nothing here starts a process.

The plan is an execution detail, derived when it is used: `probe` records what a task needs
(probe.json: the rounded worker memory limit and the fits per model; probe_measurements.json:
baseline, seconds per fit and peaks), and `plan_from_measurements` combines that with the live
machine (cores, available RAM) and the runtime.* limits at train time. So a new machine, more
RAM or another runtime.max_workers reruns no DVC stage: none of their outputs could change.

Plan: memory_limit = baseline + largest task peak above baseline + mem_probe_fudge_mb,
rounded up to 256 MiB; budget = max_ram_gb or available RAM x safety_ram_fraction;
n_workers = min(cores, max_workers, floor(budget / memory_limit)) >= 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import StudyConfig
from pipeline.io import read_json
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.fit_groups import FitGroup
from pipeline.runtime.fits.tasks import batched_fits_per_task, choose_fits_per_task
from pipeline.runtime.sizing.resources import available_memory_bytes, usable_cores

PROBE_FILE = "probe.json"
MEASUREMENTS_FILE = "probe_measurements.json"
ROUND_MB = 256
DEFAULT_SECONDS_PER_FIT = 0.05  # used only when no probe ran (plan from default_plan)
# Every worker (and the probe child that stands in for one) runs one thread per math library.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# Setting M_TRIM_THRESHOLD switches off glibc's dynamic mmap threshold, so every tensor above
# 128 KiB (lqr's kernel and feature matrices are MBs) is mmapped, page-faulted and unmapped on
# each allocation: it halved lqr's fits per second on a worker (issue 8). Workers keep glibc's
# defaults, like the probe child whose peak RSS sizes their memory limit.
DROPPED_ENV = ("MALLOC_TRIM_THRESHOLD_",)


def worker_environment(base: Mapping[str, Any]) -> dict[str, Any]:
    """`base` without DROPPED_ENV, with THREAD_ENV: the environment of a worker process."""
    return {**{k: v for k, v in base.items() if k not in DROPPED_ENV}, **THREAD_ENV}


class ProbeError(RuntimeError):
    """The machine cannot run even one worker of the planned size."""


@dataclass(frozen=True)
class ModelPlan:
    n_fits: int
    fits_per_task: int = 0  # 0: not measured (train sizes tasks from runtime.task_seconds)
    n_tasks: int = 0
    seconds_per_fit: float | None = None  # measured (None in a default plan)
    peak_mb: float | None = None  # measured child peak RSS


@dataclass(frozen=True)
class Plan:
    n_workers: int
    memory_limit_mb: int
    threads_per_worker: int = 1
    models: dict[str, ModelPlan] = field(default_factory=dict)
    baseline_mb: float | None = None
    ram_budget_mb: float | None = None
    eta_seconds: float | None = None

    def rounded(self) -> dict[str, Any]:
        """What a task needs, rounded (probe.json): byte-stable while the needs are, and free of
        anything about the machine it runs on (worker counts are derived at train time)."""
        return {
            "threads_per_worker": self.threads_per_worker,
            "memory_limit_mb": self.memory_limit_mb,
            "models": {m: {"n_fits": p.n_fits} for m, p in sorted(self.models.items())},
        }

    def measurements(self) -> dict[str, Any]:
        """The raw, jittery numbers of one probe (probe_measurements.json): nothing depends on it."""
        return {
            "baseline_mb": self.baseline_mb,
            "models": {
                m: {"seconds_per_fit": p.seconds_per_fit, "peak_mb": p.peak_mb}
                for m, p in sorted(self.models.items())
            },
        }


def load_plan(
    path: str | Path, config: StudyConfig, groups: dict[str, list[FitGroup]] | None = None
) -> Plan:
    """The plan for this machine now: probe.json (and probe_measurements.json beside it when
    present) sized by `plan_from_measurements`. `groups`: the fits to plan (default: the
    probe's fit counts)."""
    path = Path(path)
    rounded = read_json(path)
    extra_path = path.with_name(MEASUREMENTS_FILE)
    extra = read_json(extra_path) if extra_path.exists() else {"models": {}}
    measured = {
        m: ModelPlan(
            int(p["n_fits"]),
            seconds_per_fit=extra.get("models", {}).get(m, {}).get("seconds_per_fit"),
            peak_mb=extra.get("models", {}).get(m, {}).get("peak_mb"),
        )
        for m, p in rounded.get("models", {}).items()
    }
    return plan_from_measurements(
        config,
        memory_limit_mb=int(rounded["memory_limit_mb"]),
        measured=measured,
        groups=groups,
        threads_per_worker=int(rounded.get("threads_per_worker", 1)),
        baseline_mb=extra.get("baseline_mb"),
    )


def plan_from_measurements(
    config: StudyConfig,
    memory_limit_mb: int,
    measured: Mapping[str, ModelPlan],
    groups: dict[str, list[FitGroup]] | None = None,
    threads_per_worker: int = 1,
    baseline_mb: float | None = None,
) -> Plan:
    """Size the cluster for the live machine from what the probe measured.

    Workers: as many as the usable cores, runtime.max_cores / max_workers and the RAM budget
    (runtime.max_ram_gb, or available RAM x safety_ram_fraction) allow at `memory_limit_mb`
    each; ProbeError when not even one fits. Fits per task: about runtime.task_seconds of
    measured work (a power of two), at least the model's batch. `groups` (per model) gives the
    fits to plan; without it the probe's fit counts are used and no task count is given.
    """
    budget = ram_budget_mb(config)
    n_workers = size_cluster(config, memory_limit_mb, budget)
    models: dict[str, ModelPlan] = {}
    eta = 0.0
    for name, mp in measured.items():
        if groups is not None and name not in groups:
            continue  # not asked for
        gs = groups[name] if groups is not None else None
        n_fits = sum(len(g) for g in gs) if gs is not None else mp.n_fits
        spf = mp.seconds_per_fit or DEFAULT_SECONDS_PER_FIT
        fpt = pow2_floor(
            choose_fits_per_task(spf, config.runtime.task_seconds, max(n_fits, 1), n_workers)
        )
        fpt = batched_fits_per_task(
            fpt, max(n_fits, 1), n_workers, adapter_for(config, name).batch_fits
        )
        tasks = n_tasks(gs, fpt) if gs is not None else 0
        models[name] = ModelPlan(n_fits, fpt, tasks, mp.seconds_per_fit, mp.peak_mb)
        if mp.seconds_per_fit:
            eta += n_fits * mp.seconds_per_fit / n_workers
    return Plan(
        n_workers, memory_limit_mb, threads_per_worker, models, baseline_mb, budget, eta or None
    )


def side_by_side(config: StudyConfig, plan: Plan, models: list[str]) -> Plan | None:
    """`plan` for `models` training side by side on one cluster. The probe's limit holds one
    task above the worker's baseline; here a worker may run one model's task after another's
    and still hold what the first left (freed heap the allocator keeps) while the second
    peaks, so the limit allows the two largest task peaks above the baseline (the seed study:
    an lqr task after an ensemble_nn block reached 684 MiB, the probe's limit was 768 MiB:
    past the 80 % at which Dask pauses a worker). None when the RAM budget would then hold
    fewer workers than `plan`: the models train one after another instead (more workers beat
    the overlap)."""
    base = plan.baseline_mb
    above = sorted(
        (max(mp.peak_mb - base, 0.0) for m, mp in plan.models.items() if m in models and mp.peak_mb)
        if base is not None
        else (),
        reverse=True,
    )
    if base is None or len(above) < 2:
        return plan
    limit = round_up_mb(base + above[0] + above[1] + config.runtime.mem_probe_fudge_mb)
    if limit <= plan.memory_limit_mb:
        return plan
    budget = plan.ram_budget_mb if plan.ram_budget_mb is not None else ram_budget_mb(config)
    if budget < limit or size_cluster(config, limit, budget) < plan.n_workers:
        return None
    return replace(plan, memory_limit_mb=limit)


def allowed_cores(config: StudyConfig) -> int:
    rt = config.runtime
    cores = usable_cores()  # affinity, capped by a cgroup CPU quota
    if rt.max_cores != "auto":
        cores = min(cores, int(rt.max_cores))
    if rt.max_workers is not None:
        cores = min(cores, rt.max_workers)
    return max(1, cores)


def ram_budget_mb(config: StudyConfig) -> float:
    rt = config.runtime
    if rt.max_ram_gb != "auto":
        return float(rt.max_ram_gb) * 1024.0
    # the cgroup limit, not the host's RAM, bounds what a container's workers may take
    return available_memory_bytes() / 2**20 * rt.safety_ram_fraction


def size_cluster(config: StudyConfig, memory_limit_mb: int, budget_mb: float) -> int:
    """Workers the cores and the RAM budget allow; ProbeError when not even one fits."""
    if budget_mb < memory_limit_mb:
        raise ProbeError(
            f"not enough memory for one worker: a worker needs {memory_limit_mb} MiB "
            f"(baseline + largest task + runtime.mem_probe_fudge_mb) but the RAM budget is "
            f"{budget_mb:.0f} MiB; raise runtime.max_ram_gb / runtime.safety_ram_fraction, free "
            f"{memory_limit_mb - budget_mb:.0f} MiB, or lower runtime.task_seconds"
        )
    return max(1, min(allowed_cores(config), int(budget_mb // memory_limit_mb)))


def round_up_mb(mb: float) -> int:
    return int(math.ceil(mb / ROUND_MB) * ROUND_MB)


def pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def default_plan(config: StudyConfig, groups: dict[str, list[FitGroup]]) -> Plan:
    """A plan without measurements (no probe.json yet): every allowed core, an even RAM split."""
    budget = ram_budget_mb(config)
    n_workers = allowed_cores(config)
    limit = max(ROUND_MB * 4, int(budget // n_workers) // ROUND_MB * ROUND_MB)
    n_workers = size_cluster(config, limit, budget)
    models = {}
    for m, gs in groups.items():
        n_fits = sum(len(g) for g in gs)
        fpt = choose_fits_per_task(
            DEFAULT_SECONDS_PER_FIT, config.runtime.task_seconds, n_fits, n_workers
        )
        fpt = batched_fits_per_task(fpt, n_fits, n_workers, adapter_for(config, m).batch_fits)
        models[m] = ModelPlan(n_fits, fpt, n_tasks(gs, fpt))
    return Plan(n_workers=n_workers, memory_limit_mb=limit, models=models, ram_budget_mb=budget)


def task_size(
    model_plan: ModelPlan | None, config: StudyConfig, n_todo: int, n_workers: int, batch_fits: int
) -> int:
    """Fits per task for `n_todo` fits still to train (what train does and dry_run shows).

    The plan sizes tasks by time; a small remainder (a resumed run) is split evenly enough that
    every worker gets a few tasks; a model that batches fits gets tasks of up to `batch_fits`.
    """
    rt = config.runtime
    spf = model_plan.seconds_per_fit if model_plan is not None else None
    fpt = choose_fits_per_task(spf or DEFAULT_SECONDS_PER_FIT, rt.task_seconds, n_todo, n_workers)
    if model_plan is not None and model_plan.fits_per_task:
        fpt = min(fpt, model_plan.fits_per_task)
    return batched_fits_per_task(fpt, n_todo, n_workers, batch_fits)


def sizing_workers(config: StudyConfig, plan: Plan, cluster_threads: int | None = None) -> int:
    """The worker threads train sizes its tasks for (at least 4 tasks each).

    The study's own cluster (and the driver's child, which runs the same tasks): the plan's
    workers, or runtime.max_workers. An existing cluster (`cluster_threads`: the threads its
    scheduler reports at train time): the largest of those threads, runtime.max_workers and the
    plan's workers, since a cluster still scaling up (dask-jobqueue starts its workers over
    minutes) may show 1 of its 64 workers at connect, and tasks sized for too many workers cost
    only a few more tasks while tasks sized for too few leave workers idle."""
    n_workers = config.runtime.max_workers or plan.n_workers
    return n_workers if cluster_threads is None else max(n_workers, cluster_threads)


def n_tasks(groups: list[FitGroup], fits_per_task: int) -> int:
    return sum(math.ceil(len(g) / fits_per_task) for g in groups if len(g))


def resolve_plan(
    config: StudyConfig, groups: dict[str, list[FitGroup]], plan: Plan | None = None
) -> Plan:
    """`plan` if given, else the probe's measurements in the output dir sized for this machine,
    else a default plan."""
    if plan is not None:
        return plan
    probe = config.output_dir / PROBE_FILE
    if not probe.exists():
        return default_plan(config, groups)
    plan = load_plan(probe, config, groups)
    unmeasured = {m: gs for m, gs in groups.items() if m not in plan.models}
    if unmeasured:  # a model the probe did not measure: sized like a default plan
        extra = default_plan(config, unmeasured).models
        plan = replace(plan, models={**plan.models, **extra})
    return plan
