"""What each stage of `run` reads, so that an incremental run skips a stage whose inputs did not
change (runner.run_study asks; runtime/store/incremental.py keeps the records).

A stage's inputs are the params it reads, the files it reads and the package's code; prepare's
are the data and window settings and the data files, a model's train those plus the prepared
panel and the model's fit cache, assemble's every param but runtime's and the files of prepare
and train. A stage that is skipped says so in one line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import StudyConfig

if TYPE_CHECKING:
    from pipeline.runtime.store.incremental import StageRecords

log = logging.getLogger("pipeline")


def skipped(out: Path, stage: str, what: str) -> None:
    """The one line of a skipped stage, and its record in the run's stage timings."""
    from pipeline.runtime.store.timings import record_stage

    log.info("%s: skipped, unchanged since the last run (%s)", stage, what)
    record_stage(out, stage, 0.0, "skipped")


def prepare_params(cfg: dict) -> dict:
    """What prepare's output depends on besides the data files."""
    return {k: cfg[k] for k in ("data", "rolling_window", "seed")}


def data_inputs(config: StudyConfig, root: Path) -> list[Path]:
    """The files prepare reads (none for synthetic data: its params say it all)."""
    data = config.data
    paths = []
    if data.path:
        path = Path(data.path)
        paths.append(path if path.is_absolute() else root / path)
    if data.source != "synthetic" and data.raw_dir:
        raw = Path(data.raw_dir)
        paths.append(raw if raw.is_absolute() else root / raw)
    return paths


def train_file(config: StudyConfig, model: str) -> Path:
    from pipeline.stages.train import train_path

    return train_path(config, model)


def train_params(cfg: dict, model: str) -> dict:
    """What a model's fits depend on (its keys read no more than this)."""
    return {
        "data": cfg["data"],
        "rolling_window": cfg["rolling_window"],
        "seed": cfg["seed"],
        "model": cfg["models"].get(model),
        "model_cache_dir": str(cfg["runtime"].get("model_cache_dir")),
    }


def train_inputs(config: StudyConfig, model: str) -> list[Path]:
    from pipeline.schema import META_FILE, PANEL_FILE

    out = config.output_dir
    # the model's cache shards: a shard added, removed or rewritten (damaged) reruns train,
    # which then verifies what it loads
    return [out / PANEL_FILE, out / META_FILE, Path(config.model_cache_dir) / model / "shards"]


def assemble_params(cfg: dict) -> dict:
    """What assemble's tables depend on besides its input files: every param but runtime's."""
    return {k: v for k, v in cfg.items() if k != "runtime"}


def assemble_inputs(config: StudyConfig) -> list[Path]:
    """The prepared panel and every enabled model's train output."""
    from pipeline.schema import PANEL_FILE

    models = config.models.enabled()
    return [config.output_dir / PANEL_FILE, *(train_file(config, m) for m in models)]


def models_to_train(config: StudyConfig, records: StageRecords, cfg: dict) -> list[str]:
    """Enabled models whose train stage must run; one line for each that is skipped."""
    from pipeline.runtime.store.progress import ProgressStore, db_path

    rt = config.runtime
    models = list(config.models.enabled())
    path = db_path(config.output_dir)
    if rt.retrain_if_exists or not rt.allow_reload or not path.exists():
        return models  # (no store: nothing ran here yet, and none is created before the probe)
    # an unreadable store is moved aside here (its models then train, rebuilding their rows)
    with ProgressStore(path) as store:
        healthy = store.rebuilt_from is None
        done = store.counts()
    todo = []
    for model in models:
        stage = f"train@{model}"
        rec = records.get(stage)
        if (
            healthy
            and rec.get("failed") == 0
            and done.get(model, {}).get("done", -1) == rec.get("done_fits")
            and records.unchanged(stage, train_params(cfg, model), train_inputs(config, model))
        ):
            skipped(config.output_dir, stage, "its fits, the fit cache and the code")
        else:
            todo.append(model)
    return todo


def record_train(
    config: StudyConfig, records: StageRecords, cfg: dict, model: str, failed: int
) -> None:
    """A model's train stage ran: its inputs, its output, its failed and done fits."""
    from pipeline.runtime.store.progress import ProgressStore, db_path

    with ProgressStore(db_path(config.output_dir)) as store:
        done = store.counts(model).get(model, {}).get("done", 0)
    records.record(
        f"train@{model}",
        train_params(cfg, model),
        train_inputs(config, model),
        [train_file(config, model)],
        failed=int(failed),
        done_fits=int(done),
    )
