"""Run a whole study in-process: prepare -> probe -> train (every model) -> assemble.

What `python -m pipeline run` and each Hydra sweep job call (dvc.yaml runs the same stages one
by one through `python -m pipeline stage`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.config import StudyConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("pipeline")


def run_study(config: StudyConfig, dry_run: bool = False, panel: pd.DataFrame | None = None) -> int:
    """Run every stage in-process for one validated config; stage wall times go to logs/.

    `panel` (pipeline.backtest(data=...)) is written to config.data.path under the lock.
    """
    from pipeline.data import check_data_path
    from pipeline.io import check_writable_dir
    from pipeline.runtime.manifest import tracking
    from pipeline.runtime.run_lock import RunLock, remove_temp_files

    # before any work: a bad output location fails in one line and touches nothing
    check_writable_dir(config.output_dir)
    if panel is None:  # a device or FIFO as data.path: refused unread
        check_data_path(config.data, Path.cwd())
    if config.model_cache_dir != config.output_dir / "models":
        check_writable_dir(config.model_cache_dir, "runtime.model_cache_dir")
    # one run per output dir, for the whole run (OutputDirBusy: exit 2 naming the holder)
    with RunLock(config.output_dir), tracking(config):
        remove_temp_files(config.output_dir)
        if panel is not None:
            from pipeline.io import write_parquet

            write_parquet(Path(str(config.data.path)), panel)
        return _run_locked(config, dry_run)


def _run_locked(config: StudyConfig, dry_run: bool) -> int:
    from pipeline.io import write_text
    from pipeline.runtime.timings import record_stage, timed_stage
    from pipeline.stages.prepare import prepare

    root = Path.cwd()
    if dry_run:
        return _dry_run(config, root)
    out = config.output_dir
    started = time.perf_counter()
    result = prepare(config, root)  # validates the data first: a bad input writes nothing
    record_stage(out, "prepare", time.perf_counter() - started)
    # the later stages' imports (Dask, torch, scipy) after the data passed: bad data fails fast
    from pipeline.runtime.shared_cluster import SharedCluster
    from pipeline.stages.probe import run_probe
    from pipeline.stages.study import assemble_study
    from pipeline.stages.train import run_train

    log.info(
        "prepare: %d countries, fingerprint %s", len(result.countries), result.fingerprint[:12]
    )
    # The config a study ran with travels with its outputs (RESULTS.md and humans read it).
    write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    with timed_stage(out, "probe"):
        plan = run_probe(config)
    failed = 0
    # one cluster serves every model (started by the first one with fits to train)
    with SharedCluster() as cluster:
        for model in config.models.enabled():
            with timed_stage(out, f"train@{model}"):
                failed += run_train(config, model, plan, cluster).failed
    with timed_stage(out, "assemble"):
        assemble_study(config)
    return 1 if failed else 0


def _dry_run(config: StudyConfig, root: Path) -> int:
    from pipeline.schema import PANEL_FILE
    from pipeline.stages.dry_run import dry_run
    from pipeline.stages.prepare import prepare

    if not (config.output_dir / PANEL_FILE).exists():
        prepare(config, root)  # cheap, and the plan needs the real data shapes
    print(dry_run(config))
    return 0
