"""`--dry-run`: what train would do, as text (fits, tasks, status, cluster plan, ETA). Trains nothing."""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import StudyConfig
from pipeline.io import read_json
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.shared_plan import fit_groups
from pipeline.runtime.sizing.plan import (
    DEFAULT_SECONDS_PER_FIT,
    PROBE_FILE,
    Plan,
    resolve_plan,
    sizing_workers,
    task_size,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("pipeline")


def dry_run(
    config: StudyConfig,
    plan: Plan | None = None,
    models: list[str] | None = None,
    panel: pd.DataFrame | None = None,
) -> str:
    """What train would do, as text: per model fits, tasks and status; cluster plan; ETA. Trains nothing.

    Status: done = in the model cache (reused unless runtime.retrain_if_exists), failed = the
    store's last attempt failed, pending = the rest. The store is read without blocking a
    running train. `panel`: the prepared panel (default: the output dir's). Memory and ETA say
    where they come from: a probe's measurements, or none yet (then no number is invented).
    """
    from pipeline.data.prepared import load_panel
    from pipeline.runtime.store.progress import db_path
    from pipeline.runtime.store.progress_view import failed_keys as store_failed_keys
    from pipeline.stages.train import cached_mask

    if panel is None:
        panel = load_panel(config.output_dir)
    names = list(models) if models is not None else list(config.models.enabled())
    groups = {m: fit_groups(panel, config, adapter_for(config, m)) for m in names}
    source = _plan_source(config, groups, plan)
    plan = resolve_plan(config, groups, plan)
    rt = config.runtime
    # what train sizes for before it knows an existing cluster's threads (not asked here)
    n_workers = sizing_workers(config, plan)
    failed_keys: set[str] = set()
    db = db_path(config.output_dir)
    if db.exists():
        try:
            failed_keys = store_failed_keys(db)
        except sqlite3.DatabaseError as error:  # derived data: the next run rebuilds it
            log.warning("progress store %s is unreadable (%s): failures not shown", db, error)
    reuse = rt.allow_reload and not rt.retrain_if_exists
    lines = [
        _cluster_line(config, n_workers, plan.threads_per_worker),
        _memory_line(plan, n_workers, source),
        f"{'model':<12} {'fits':>7} {'done':>7} {'failed':>7} {'pending':>7} {'fits/task':>9} {'tasks':>6} {'ETA':>9}",
    ]
    total_eta = 0.0
    unmeasured = []
    for m in names:
        gs = groups[m]
        cached = cached_mask(config, gs) if reuse else [np.zeros(len(g), bool) for g in gs]
        n_fits = sum(len(g) for g in gs)
        done = int(sum(c.sum() for c in cached))
        failed = int(
            sum(
                sum(1 for k in g.keys[~c] if k in failed_keys)
                for g, c in zip(gs, cached, strict=True)
            )
        )
        todo = n_fits - done
        mp = plan.models.get(m)
        spf = mp.seconds_per_fit if mp is not None and mp.seconds_per_fit else None
        if spf is None and todo:
            unmeasured.append(m)
        fpt = task_size(mp, config, max(todo, 1), n_workers, adapter_for(config, m).batch_fits)
        tasks = sum(math.ceil(int((~c).sum()) / fpt) for c in cached)
        eta = todo * spf / n_workers if spf else (0.0 if not todo else None)
        total_eta += eta or 0.0
        eta_text = f"{eta:8.0f}s" if eta is not None else "  unknown"
        lines.append(
            f"{m:<12} {n_fits:>7} {done:>7} {failed:>7} {todo - failed:>7} {fpt:>9} {tasks:>6} {eta_text}"
        )
    lines.extend(_eta_lines(total_eta, unmeasured, source))
    return "\n".join(lines)


def _cluster_line(config: StudyConfig, n_workers: int, threads_per_worker: int) -> str:
    rt = config.runtime
    if not rt.scheduler_address:
        return (
            f"cluster: {n_workers} workers x {threads_per_worker} thread (LocalCluster on "
            f"127.0.0.1, dashboard port {rt.dashboard_port})"
        )
    basis = "runtime.max_workers" if rt.max_workers else "the workers of this machine's plan"
    return (
        f"cluster: the existing cluster at {rt.scheduler_address} (not contacted by a dry run): "
        f"tasks below sized for {n_workers} worker threads ({basis}); at train time the "
        "cluster's connected threads decide when they are more"
    )


def _plan_source(config: StudyConfig, groups: dict, plan: Plan | None) -> str:
    """Where the plan's measurements come from: 'given', 'probe', 'other-probe' (the output
    dir's probe measured other fits than these) or 'none' (no probe yet)."""
    if plan is not None:
        return "given"
    path = config.output_dir / PROBE_FILE
    if not path.exists():
        return "none"
    # a run probes only the models it trains: compare those the probe measured
    probed = read_json(path).get("models", {})
    measured = [m for m in groups if m in probed]
    same = bool(measured) and all(
        probed[m].get("n_fits") == sum(len(g) for g in groups[m]) for m in measured
    )
    return "probe" if same else "other-probe"


def _memory_line(plan: Plan, n_workers: int, source: str) -> str:
    limit = plan.memory_limit_mb
    if source == "given":
        return f"memory limit: {limit} MiB per worker (measured by this run's probe)"
    if source == "probe":
        return f"memory limit: {limit} MiB per worker (measured by the probe, {PROBE_FILE})"
    if source == "other-probe":
        return (
            f"memory limit: {limit} MiB per worker (measured by this dir's last probe, "
            f"{PROBE_FILE}, for other fits: a run measures these again)"
        )
    budget = f"{plan.ram_budget_mb:.0f}" if plan.ram_budget_mb is not None else "?"
    return (
        f"memory limit: not measured yet (no {PROBE_FILE}: a run probes first); until then at "
        f"most {limit} MiB per worker = RAM budget {budget} MiB / {n_workers} workers, a bound, "
        "not a need"
    )


def _eta_lines(total_eta: float, unmeasured: list[str], source: str) -> list[str]:
    if not unmeasured:
        how = {
            "given": "this run's probe",
            "probe": f"the probe's seconds per fit ({PROBE_FILE})",
            "other-probe": f"seconds per fit of the last probe, of other fits ({PROBE_FILE})",
        }[source]
        return [
            f"ETA: {total_eta:.0f} s of training (pending fits x {how} / workers; plus cluster start)"
        ]
    out = [
        f"ETA: unknown for {', '.join(unmeasured)}: no probe measured their seconds per fit yet "
        "(a run probes before it trains)"
    ]
    if total_eta:
        out.append(f"     {total_eta:.0f} s of training for the measured models")
    out.append(
        f"fits/task and tasks of unmeasured models assume {DEFAULT_SECONDS_PER_FIT} s per fit"
    )
    return out
