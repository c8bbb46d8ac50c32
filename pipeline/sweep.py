"""Hydra multirun: `python -m pipeline run -m key=a,b other=[1],[3]` runs every combination.

Hydra's public override parser expands the sweep (`a,b`, `glob(...)`, `range(...)`,
`choice(...)`, lists such as `[1],[3]`) and `hydra.compose` composes each job; the jobs run
one after another in this process. Each job:

- writes into its own folder, `hydra.sweep.dir/<job number>` (conf: `multirun/${name}/N`),
  which becomes the job's `runtime.output_dir`; Hydra records the job's composed config and
  overrides in `N/.hydra/` (nothing lands in the project root);
- shares one model cache, `hydra.sweep.dir/models` (unless `runtime.model_cache_dir` is set),
  so a fit whose content key an earlier job (or an earlier sweep) already produced is loaded,
  not refitted: a job trains only what differs;
- runs the whole study in-process through `pipeline.runner.run_study`, so each job starts its
  own Dask cluster sized by its own probe and shuts it down before the next job starts (jobs
  run one after another; the parallelism is inside each job, which already uses every core).

At the end a table compares the jobs (status, fits trained/loaded, headline metrics from each
job's metrics.json); it is also written to `hydra.sweep.dir/summary.csv`. Rerunning the same
sweep resumes it: finished fits are loaded from the shared cache.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, validate
from pipeline.config.structured import first_line

log = logging.getLogger("pipeline.sweep")
CACHE_SUBDIR = "models"
SUMMARY_FILE = "summary.csv"
HEADLINE = ("pinball", "crps")  # pooled losses; lower is better


@dataclass(frozen=True)
class JobResult:
    """What one sweep job did (plain data, returned by the job function)."""

    number: int
    overrides: tuple[str, ...]
    output_dir: str
    status: int  # run_study's exit code; 2 = bad config, 1 = failed fits or an error
    error: str | None = None
    trained: int = 0
    loaded: int = 0
    failed: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def run_multirun(overrides: list[str]) -> int:
    """Run a Hydra multirun over `overrides`; print and save the comparison table.

    Returns 0 when every job succeeded, else 1. Bad overrides raise ConfigError (exit 2).
    """
    results = launch(overrides)
    if not results:
        print("multirun: no jobs")
        return 1
    sweep_dir = Path(results[0].output_dir).parent
    rows = summary_rows(results)
    write_summary(sweep_dir / SUMMARY_FILE, rows)
    print(format_table(rows))
    print(f"\n{len(results)} jobs under {sweep_dir}; table saved to {sweep_dir / SUMMARY_FILE}")
    return 0 if all(r.status == 0 for r in results) else 1


def launch(overrides: Sequence[str], conf_dir: Path | None = None) -> list[JobResult]:
    """Expand the sweep with Hydra's override parser, compose every job, run them in order.

    Only Hydra's public API is used: `hydra.compose` per job and
    `hydra.core.override_parser` to expand sweeps (what Hydra's BasicSweeper does: the
    cartesian product of each key's values, in the order the keys were given). Every job is
    composed before the first one runs, so a bad key fails the sweep at once (ConfigError).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config.compose import CONFIG_NAME, find_conf_dir

    conf_dir = (conf_dir or find_conf_dir()).resolve()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            jobs = [
                (number, job, compose(CONFIG_NAME, overrides=job, return_hydra_config=True))
                for number, job in enumerate(expand_sweep(overrides))
            ]
            composed = [(number, job, _job_config(cfg, number)) for number, job, cfg in jobs]
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(
            "multirun overrides",
            "keys and sweep values that exist in conf/ (e.g. models.lqr.alphas=[10],[20])",
            first_line(error),
        ) from None
    return [_job(number, job, plain, hydra) for number, job, (plain, hydra) in composed]


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every job's overrides: one value per swept key, in cartesian-product order.

    Must run inside a Hydra initialize context (glob sweeps over a config group list the
    group's options through the config loader).
    """
    import itertools

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    choices: dict[str, list[str]] = {}
    for override in parser.parse_overrides(list(overrides)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(f"only discrete sweeps (a,b / range / glob): {key}")
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def _job_config(cfg: Any, number: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the job's plain study config, its hydra section) with `hydra.job.num` = number."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        cfg.hydra.job.num = number
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:job.num} in sweep.subdir
    hydra = {"sweep": OmegaConf.to_container(cfg.hydra.sweep, resolve=True)}
    with open_dict(cfg):
        del cfg["hydra"]
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict) and isinstance(hydra, dict)
    return plain, hydra


def _job(
    number: int, overrides: list[str], plain: dict[str, Any], hydra: dict[str, Any]
) -> JobResult:
    """One sweep job: the composed config, pointed at its own folder and the shared cache."""
    from pipeline.config.plain_scalars import safe_dump
    from pipeline.data.errors import DataError
    from pipeline.errors import OutputError
    from pipeline.io import write_text
    from pipeline.runner import missing_dirs, run_study
    from pipeline.runtime.store.run_lock import OutputDirBusy

    sweep = hydra["sweep"]
    job_dir = Path(_relative(str(Path(sweep["dir"]) / str(sweep["subdir"]))))
    # what Hydra records for a job: its composed config and its overrides (written here: the
    # jobs are composed with hydra.compose, so Hydra itself writes nothing in the folder)
    record = {
        job_dir / ".hydra" / "config.yaml": safe_dump(plain, sort_keys=False),
        job_dir / ".hydra" / "overrides.yaml": safe_dump(list(overrides)),
    }
    before = {path: path.read_bytes() if path.is_file() else None for path in record}
    new_dirs = missing_dirs(job_dir / ".hydra")
    for path, text in record.items():
        write_text(path, text)
    job_plain = with_job_paths(plain, job_dir, job_dir.parent / CACHE_SUBDIR)
    log.info("multirun job %d (%s) -> %s", number, " ".join(overrides) or "no overrides", job_dir)
    started = time.time()
    try:
        status, error = run_study(validate(job_plain)), None
    except (ConfigError, DataError, OutputError, OutputDirBusy) as exc:
        # one bad combination must not stop the others (exit 2 at the command line)
        status, error = 2, str(exc)
        _restore(before, new_dirs)  # a refused job leaves its folder as it found it
    except Exception as exc:
        log.exception("multirun job %d failed", number)
        status, error = 1, f"{type(exc).__name__}: {exc}"
    counts = fit_counts(job_dir, since=started)
    # a job that stopped early may have a previous sweep's metrics in its folder: not shown
    metrics = headline_metrics(job_dir) if error is None else {}
    return JobResult(
        number, tuple(overrides), str(job_dir), status, error, *counts, metrics=metrics
    )


def _restore(before: Mapping[Path, bytes | None], new_dirs: list[Path]) -> None:
    """Put back the job's record files as they were (removed where there were none), then
    remove the folders made for the job that are empty again."""
    from pipeline.io import atomic_path
    from pipeline.runner import remove_empty

    for path, data in before.items():
        if data is None:
            path.unlink(missing_ok=True)
        else:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
    remove_empty(new_dirs)


def with_job_paths(plain: Mapping[str, Any], job_dir: Path, shared_cache: Path) -> dict[str, Any]:
    """The job's config: output_dir = its folder; model cache shared unless set explicitly."""
    out = {**plain, "runtime": dict(plain.get("runtime") or {})}
    out["runtime"]["output_dir"] = str(job_dir)
    if not out["runtime"].get("model_cache_dir"):
        out["runtime"]["model_cache_dir"] = str(shared_cache)
    return out


def fit_counts(job_dir: Path, since: float = 0.0) -> tuple[int, int, int]:
    """(trained, loaded, failed) fits over the train runs this job started (progress store)."""
    from pipeline.runtime.store.progress import db_path, read_table

    path = db_path(job_dir)
    if not path.exists():
        return 0, 0, 0
    runs = read_table(path, "runs")
    runs = runs[runs["started"] >= since - 1.0]
    return tuple(int(runs[c].fillna(0).sum()) for c in ("trained", "loaded", "failed"))  # type: ignore[return-value]


def headline_metrics(job_dir: Path) -> dict[str, float]:
    """Per model, pooled pinball loss and CRPS over all months.

    Read from the job's metrics_summary.json (assemble's headline numbers), else metrics.json.
    """
    from pipeline.io import read_json

    summary, full = job_dir / "metrics_summary.json", job_dir / "metrics.json"
    out: dict[str, float] = {}
    if summary.exists():
        for model, values in sorted((read_json(summary).get("all") or {}).items()):
            for metric in HEADLINE:
                if isinstance(values.get(metric), int | float):
                    out[f"{metric}:{model}"] = float(values[metric])
    elif full.exists():
        period = read_json(full).get("all") or {}
        for metric in HEADLINE:
            for model, values in sorted((period.get(metric) or {}).items()):
                if isinstance(values, Mapping) and isinstance(values.get("mean"), int | float):
                    out[f"{metric}:{model}"] = float(values["mean"])
    return out


def summary_rows(results: Sequence[JobResult]) -> list[dict[str, Any]]:
    """One row per job: number, its own overrides, status, fit counts, then the headline metrics."""
    metric_names = sorted({name for r in results for name in r.metrics}, key=_metric_order)
    # overrides every job shares say nothing about the difference between jobs
    common = set.intersection(*(set(r.overrides) for r in results)) if len(results) > 1 else set()
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "job": r.number,
            "overrides": " ".join(o for o in r.overrides if o not in common) or "-",
            "status": "ok"
            if r.status == 0
            else (r.error or f"exit {r.status}").splitlines()[0][:60],
            "trained": r.trained,
            "loaded": r.loaded,
            "failed": r.failed,
        }
        row.update({name: r.metrics.get(name, math.nan) for name in metric_names})
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain fixed-width table (numbers to 4 significant digits); the best value per metric starred."""
    if not rows:
        return ""
    columns = list(rows[0])
    best = {
        c: min((r[c] for r in rows if _finite(r[c])), default=None) for c in columns if ":" in c
    }
    cells = [[_cell(r[c], best.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    if best:
        lines.append(
            "(* = lowest in its column; losses pooled over countries, horizons, quantiles, origins)"
        )
    return "\n".join(lines)


def write_summary(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import pandas as pd

    from pipeline.io import write_text

    write_text(
        path, pd.DataFrame(list(rows)).to_csv(index=False, float_format="%.6g", lineterminator="\n")
    )


def _cell(value: Any, best: float | None) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.4g}{'*' if best is not None and value == best else ''}"
    return str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _metric_order(name: str) -> tuple[int, int, str]:
    from pipeline.models.plugins.registry import builtin_names

    metric, _, model = name.partition(":")
    models = {m: i for i, m in enumerate(builtin_names())}
    rank = HEADLINE.index(metric) if metric in HEADLINE else len(HEADLINE)
    return rank, models.get(model, len(models)), name


def _relative(path: str) -> str:
    """`path` relative to the working directory when it lies below it (shorter, movable)."""
    try:
        return (
            os.path.relpath(path)
            if Path(path).resolve().is_relative_to(Path.cwd().resolve())
            else path
        )
    except ValueError:  # another drive on Windows
        return path
