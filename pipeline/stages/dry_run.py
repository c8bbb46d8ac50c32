"""`--dry-run`: what train would do, as text (fits, tasks, status, cluster plan, ETA). Trains nothing."""

from __future__ import annotations

import logging
import math
import sqlite3

import numpy as np

from pipeline.config import StudyConfig
from pipeline.models.registry import adapter_for
from pipeline.runtime.fits.shared_plan import fit_groups
from pipeline.runtime.sizing.plan import Plan, resolve_plan, task_size

log = logging.getLogger("pipeline")


def dry_run(config: StudyConfig, plan: Plan | None = None, models: list[str] | None = None) -> str:
    """What train would do, as text: per model fits, tasks and status; cluster plan; ETA. Trains nothing.

    Status: done = in the model cache (reused unless runtime.retrain_if_exists), failed = the
    store's last attempt failed, pending = the rest. The store is read without blocking a
    running train.
    """
    from pipeline.runtime.store.progress import db_path
    from pipeline.runtime.store.progress_view import failed_keys as store_failed_keys
    from pipeline.stages.prepare import load_panel
    from pipeline.stages.train import cached_mask

    panel = load_panel(config.output_dir)
    names = list(models) if models is not None else list(config.models.enabled())
    groups = {m: fit_groups(panel, config, adapter_for(config, m)) for m in names}
    plan = resolve_plan(config, groups, plan)
    rt = config.runtime
    n_workers = rt.max_workers or plan.n_workers
    failed_keys: set[str] = set()
    db = db_path(config.output_dir)
    if db.exists():
        try:
            failed_keys = store_failed_keys(db)
        except sqlite3.DatabaseError as error:  # derived data: the next run rebuilds it
            log.warning("progress store %s is unreadable (%s): failures not shown", db, error)
    reuse = rt.allow_reload and not rt.retrain_if_exists
    where = rt.scheduler_address or f"LocalCluster on 127.0.0.1, dashboard port {rt.dashboard_port}"
    lines = [
        f"cluster: {n_workers} workers x {plan.threads_per_worker} thread, memory limit {plan.memory_limit_mb} MiB "
        f"per worker ({where})",
        f"{'model':<12} {'fits':>7} {'done':>7} {'failed':>7} {'pending':>7} {'fits/task':>9} {'tasks':>6} {'ETA':>9}",
    ]
    total_eta = 0.0
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
        fpt = task_size(mp, config, max(todo, 1), n_workers, adapter_for(config, m).batch_fits)
        tasks = sum(math.ceil(int((~c).sum()) / fpt) for c in cached)
        eta = todo * spf / n_workers if spf else None
        total_eta += eta or 0.0
        eta_text = f"{eta:8.0f}s" if eta is not None else "  unknown"
        lines.append(
            f"{m:<12} {n_fits:>7} {done:>7} {failed:>7} {todo - failed:>7} {fpt:>9} {tasks:>6} {eta_text}"
        )
    lines.append(
        f"ETA: {total_eta:.0f} s of training (plus cluster start)"
        if total_eta
        else "ETA: unknown (run probe)"
    )
    return "\n".join(lines)
