"""Run a whole study in-process: prepare -> probe -> train (every model) -> assemble.

What `python -m pipeline run` and each Hydra sweep job call (dvc.yaml runs the same stages one
by one through `python -m pipeline stage`). Which stages an incremental run skips (what each
one reads) is stage_inputs.py's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline.stage_inputs as inputs
from pipeline.config import StudyConfig
from pipeline.config.plain_scalars import safe_dump

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("pipeline")


def run_study(config: StudyConfig, dry_run: bool = False, panel: pd.DataFrame | None = None) -> int:
    """Run every stage in-process for one validated config; stage wall times go to logs/.

    `panel` (pipeline.backtest(data=...)) is written to config.data.path under the lock.
    """
    from pipeline.data import check_data_path
    from pipeline.io import check_writable_dir

    # before any work: a bad output location fails in one line and touches nothing
    check_writable_dir(config.output_dir)
    if panel is None:  # a device or FIFO as data.path: refused unread
        check_data_path(config.data, Path.cwd())
    if config.model_cache_dir != config.output_dir / "models":
        check_writable_dir(config.model_cache_dir, "runtime.model_cache_dir")
    if config.runtime.scheduler_address and not dry_run:  # a dry run contacts no cluster
        from pipeline.config.scheduler import check_reachable

        check_reachable(config.runtime.scheduler_address)
    # one run per output dir, for the whole run (OutputDirBusy: exit 2 naming the holder)
    from pipeline.runtime.store.run_lock import OutputDirBusy

    new_dirs = missing_dirs(config.output_dir)
    try:
        return _run_held(config, dry_run, panel)
    except OutputDirBusy:  # the folder is another run's (made since missing_dirs looked)
        raise
    except BaseException:
        # bad data found by prepare (or any stop before a file was written): the folders the
        # lock made for this run are removed again, so a refused start leaves nothing behind
        remove_empty(new_dirs)
        raise


def missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    path = Path(path).absolute()
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(dirs: list[Path]) -> None:
    """Remove each of `dirs` (deepest first) that is an empty directory; others are kept."""
    for folder in dirs:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote something), or gone already
            return


def _run_held(config: StudyConfig, dry_run: bool, panel: pd.DataFrame | None) -> int:
    from pipeline.runtime.fits.shared_plan import one_plan_per_run
    from pipeline.runtime.store.manifest import tracking
    from pipeline.runtime.store.run_lock import RunLock, remove_temp_files

    with RunLock(config.output_dir), tracking(config), one_plan_per_run():
        remove_temp_files(config.output_dir)
        if panel is not None:
            from pipeline.io import write_parquet

            write_parquet(Path(str(config.data.path)), panel)
        if dry_run:
            return _run_locked(config, dry_run)
        from pipeline.runtime.ui.logs import RunLog, new_run_id

        # the whole run's log: the probe's details, the cluster's and Dask's own lines
        with RunLog(config.output_dir, new_run_id("run"), hold=True):  # started after prepare
            return _run_locked(config, dry_run)


def _run_locked(config: StudyConfig, dry_run: bool) -> int:
    try:
        return _run_stages(config, dry_run)
    finally:
        # a probe child started before prepare and never used (bad data, a failed stage) ends
        # with the run, also where the process goes on (backtest() in a notebook)
        from pipeline.stages.probe_process import discard_early

        discard_early()


def _run_stages(config: StudyConfig, dry_run: bool) -> int:
    from pipeline.io import write_text
    from pipeline.runtime.store.incremental import StageRecords
    from pipeline.runtime.store.timings import record_stage, timed_stage
    from pipeline.schema import META_FILE, PANEL_FILE

    root = Path.cwd()
    if dry_run:
        return _dry_run(config, root)
    out = config.output_dir
    records = StageRecords(out)
    cfg = config.to_dict()
    prep_params = inputs.prepare_params(cfg)
    prep_inputs = inputs.data_inputs(config, root)
    if records.unchanged("prepare", prep_params, prep_inputs):
        inputs.skipped(out, "prepare", "the data, its params and the code")
    else:
        from pipeline.stages.prepare import prepare

        _start_child_early(config, list(config.models.enabled()))  # new data: they will train
        if config.models.enabled():
            from pipeline.stages.probe_process import start_early

            start_early(config, list(config.models.enabled()))  # when it will surely measure
        records.forget("prepare")
        started = time.perf_counter()
        result = prepare(config, root)  # validates the data first: a bad input writes nothing
        record_stage(out, "prepare", time.perf_counter() - started)
        log.info(
            "prepare: %d countries, fingerprint %s", len(result.countries), result.fingerprint[:12]
        )
        records.record("prepare", prep_params, prep_inputs, [out / PANEL_FILE, out / META_FILE])
    from pipeline.runtime.ui.logs import start_held_logs

    start_held_logs()  # the data proved valid: the run's log file may be written now
    # The config a study ran with travels with its outputs (RESULTS.md, humans and `run
    # --config` read it: a string either YAML version misreads is quoted).
    write_text(out / "config.yaml", safe_dump(config.to_dict(), sort_keys=False))
    todo = inputs.models_to_train(config, records, cfg)
    failed = 0
    if not todo:  # nothing trains, so nothing is probed: not the last run's probe time
        record_stage(out, "probe", 0.0, "skipped")
    if todo:
        _start_child_early(config, todo)
        from pipeline.runtime.execute.shared_cluster import SharedCluster
        from pipeline.runtime.sizing.resources import release_free_memory
        from pipeline.stages.probe import run_probe
        from pipeline.stages.train_lanes import LaneEnd, train_side_by_side

        with timed_stage(out, "probe"):
            plan = run_probe(config, todo)
        plan, together = _side_by_side(config, plan, todo)
        _import_in_background("pipeline.stages.study")  # assemble's, while train works
        for model in todo:
            records.forget(f"train@{model}")

        last = started = time.perf_counter()

        def ended(end: LaneEnd) -> None:  # in this thread, as each model's train ends
            nonlocal failed, last
            # the models overlap: each train@ stage is the wall time train took from the
            # previous model's end to this one's, so the stages add up to train's wall time
            # (the model's own wall time is in its summary line)
            now = time.perf_counter()
            status = "failed" if end.summary is None else "ok"
            record_stage(out, f"train@{end.model}", now - last, status)
            last = now
            if end.summary is not None:
                failed += end.summary.failed
                inputs.record_train(config, records, cfg, end.model, end.summary.failed)

        # one cluster serves every model (started by the first one with fits to train); the
        # models train side by side on it, the longest tasks first
        with SharedCluster() as cluster:
            try:
                for models in [todo] if together else [[m] for m in todo]:
                    train_side_by_side(config, models, plan, cluster, ended)
            except SystemExit as stopped:  # TrainInterrupted: a signal, progress saved
                _end_at_once(cluster, stopped)
                raise
        log.info("train: %d models in %.1f s", len(todo), time.perf_counter() - started)
        release_free_memory()  # what train's threads freed, before assemble allocates
    assemble_params = inputs.assemble_params(cfg)
    assemble_inputs = inputs.assemble_inputs(config)
    if records.unchanged("assemble", assemble_params, assemble_inputs):
        inputs.skipped(out, "assemble", "the forecasts, the params and the code")
    else:
        from pipeline.stages.study import assemble_study

        records.forget("assemble")
        with timed_stage(out, "assemble"):
            written = assemble_study(config)
        outputs = [
            *written.forecast_files,
            written.all_forecasts,
            written.missing,
            written.metrics,
            written.metrics_summary,
            written.metrics_headline,
            *written.tables,
            *written.images,
            written.report,
        ]
        records.record("assemble", assemble_params, assemble_inputs, outputs)
    return 1 if failed else 0


def _end_at_once(cluster: Any, stopped: SystemExit) -> None:
    """After a signal's stop (every lane saved its progress), a local cluster is not closed
    gracefully: Dask's close took 4-5 s under load. Its workers are killed and the run exits
    now with the signal's code, as a SIGKILL would leave it (which a resume handles)."""
    from pipeline.runtime.execute.stop import end_now, end_now_allowed

    # (backtest() in a notebook: its process is not ended; the cluster closes as before)
    if end_now_allowed() and cluster.handle is not None and cluster.handle.local:
        end_now(int(stopped.code or 1))


def _side_by_side(config: StudyConfig, plan: Any, todo: list[str]) -> tuple[Any, bool]:
    """The plan for the models to train and whether they train side by side: they do with a
    worker memory limit for models mixing on a worker, unless that limit would cost workers
    (then one after another, on the probe's plan). An existing cluster's workers keep their
    own limits: its models always train side by side."""
    from pipeline.runtime.sizing.plan import side_by_side

    if config.runtime.scheduler_address or len(todo) < 2:
        return plan, True
    shared = side_by_side(config, plan, todo)
    if shared is None:
        log.info(
            "train: %d models one after another: side by side a worker would need room for "
            "two tasks, which the RAM budget holds for fewer than %d workers",
            len(todo),
            plan.n_workers,
        )
        return plan, False
    if shared.memory_limit_mb != plan.memory_limit_mb:
        log.info(
            "train: %d models side by side: %d MiB per worker (a worker may run one model's "
            "task after another's; the probe's limit for one task is %d MiB)",
            len(todo),
            shared.memory_limit_mb,
            plan.memory_limit_mb,
        )
    return shared, True


def _start_child_early(config: StudyConfig, models: list[str]) -> None:
    """Tasks below runtime.in_process_below_s of work run in the driver's child: spawn it and
    import what the models' tasks import (their solvers: torch for ar_qr, lqr, ensemble_nn;
    2-3 CPU-s) now, on the other core while prepare and the probe run, instead of when the
    first task is sent. A study that then starts a cluster leaves it idle."""
    rt = config.runtime
    if rt.in_process_below_s and not rt.scheduler_address:
        from pipeline.runtime.execute.child import shared_child
        from pipeline.runtime.execute.task_imports import task_imports

        shared_child().start(task_imports(config, models))


BACKGROUND_IMPORT_WAIT_S = 30.0  # at the process's exit, for an import still under way


def _import_in_background(module: str) -> None:
    """Import `module` on a daemon thread: assemble's imports (scipy.stats, matplotlib: 1-2
    CPU-s) then overlap with train, whose driver mostly waits on its workers or child. A
    process that ends meanwhile (a signal's stop) waits for the import at its exit: a daemon
    thread still inside an extension's C++ code when the interpreter finalizes is ended by
    pthread_exit, whose unwinding through that code aborted the process ("terminate called
    without an active exception", exit -6 instead of 143; once in a fresh clone's suite)."""
    import atexit
    import contextlib
    import importlib
    import threading

    def load() -> None:
        # on failure it is imported again where it is used, which then reports the error
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    thread = threading.Thread(target=load, name=f"qpipe-import-{module}", daemon=True)
    thread.start()
    # (atexit runs before the interpreter starts finalizing, so the thread ends normally)
    atexit.register(thread.join, BACKGROUND_IMPORT_WAIT_S)


def _dry_run(config: StudyConfig, root: Path) -> int:
    """The plan for the config given: on the output dir's panel when prepare would keep it,
    else on a panel prepared in memory (a finished run's panel is not replaced)."""
    from pipeline.runtime.store.incremental import StageRecords
    from pipeline.schema import PANEL_FILE
    from pipeline.stages.dry_run import dry_run
    from pipeline.stages.prepare import build_prepared, prepare

    out = config.output_dir
    panel = None
    if not (out / PANEL_FILE).exists():
        prepare(config, root)  # cheap, and the plan needs the real data shapes
    elif not StageRecords(out).unchanged(
        "prepare", inputs.prepare_params(config.to_dict()), inputs.data_inputs(config, root)
    ):
        panel, _ = build_prepared(config, root)
        log.info(
            "dry run: planned on data prepared in memory (%s is of other settings)", PANEL_FILE
        )
    print(dry_run(config, panel=panel))
    return 0
