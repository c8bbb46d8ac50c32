"""`assemble`: train shards -> the seed's forecast tables, metrics.json, metric tables, charts and
the HTML report.

Reads every `train/*.parquet` and the prepared panel (stages/forecast_inputs.py: pyarrow and
integer codes, no dask), joins the actuals (ACTUAL = y_raw at (COUNTRY, TIME), null where
unobserved or past the data), and writes:

    forecasts/{model}_q{q}_h{h}.parquet   one per model x quantile x horizon, schema columns
    forecasts/all.parquet                 every forecast
    forecasts/missing.parquet             expected fits without a forecast (never dropped silently;
                                          REASON absent, failed (train gave up) or no forecast)
    metrics.json                          metrics_json.compute_metrics + fit counts (dvc metrics)
    metrics_summary.json                  metrics_json.summary_metrics: headline numbers per model
    metrics_headline.json                 metrics_json.headline_metrics: pinball and coverage per
                                          model (DVC's `metrics:`, the columns of `dvc exp show`)
    reports/tables/{metric}.parquet       evaluate.metric_tables (PERIOD = all / ex_covid)
    reports/plots/*.csv                   small wide tables for `dvc plots`
    reports/*.png, reports/fan/*.png      charts
    reports/index.html                    the one-page report

Every file is written atomically and deterministically, so assembling twice gives the same
bytes; files a previous config left in these folders (a dropped model, horizon, country) are
removed, so the folders always describe the current config only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation import metrics_json
from pipeline.evaluation.calibration import window_scale
from pipeline.evaluation.derived import DerivedSettings, derive
from pipeline.evaluation.report import render_report
from pipeline.io import write_json, write_parquet, write_text
from pipeline.runtime.sizing.resources import release_free_memory
from pipeline.schema import (
    COUNTRY,
    PANEL_FILE,
    TIME,
    conform_forecasts,
)
from pipeline.stages import assemble_fork
from pipeline.stages import charts as chart_stage
from pipeline.stages.assemble_report import (
    check_name,
    fan_note_line,
    fan_selection,
    remove_stale,
    report_summary,
)
from pipeline.stages.assemble_tables import (
    tables_from_ipc,
    test_tables,
    test_tables_ipc,
    write_forecast_tables,
    write_plot_data,
)
from pipeline.stages.failed_fits import label_failed, no_forecasts, read_failed_fits
from pipeline.stages.forecast_inputs import (
    FIT_KEY,
    lean_frame,
    read_forecasts,
    reconcile,
    schema_dtypes,
)

log = logging.getLogger(__name__)
# Forecast rows from which a fork computes the coverage tests, the MCS and the decomposition
# (about 0.5 CPU-s at this size, 5 at 3M rows) while this process writes the forecast tables
# and computes the metric tables; below, the fork (if any) renders charts only.
FORK_TESTS_MIN_ROWS = 100_000
# forecast columns only the forecast tables hold (no metric, chart or summary reads them)
WRITTEN_ONLY = ("WINDOW_START", "ALPHA")


@dataclass(frozen=True)
class AssembleResult:
    """What assemble wrote (paths are absolute or relative as `output_dir` was given)."""

    forecast_files: tuple[Path, ...]  # the per model/quantile/horizon tables
    all_forecasts: Path
    missing: Path
    metrics: Path
    metrics_summary: Path
    metrics_headline: Path
    tables: tuple[Path, ...]
    images: tuple[Path, ...]
    report: Path
    n_rows: int
    n_missing: int
    n_unexpected: int  # rows in train that the config did not ask for (left out of the tables)
    removed: tuple[Path, ...] = field(default=())  # stale files from a previous config


def assemble(
    output_dir: Path,
    target: str,
    benchmark: str = evaluate.BENCHMARK,
    expected: pd.DataFrame | None = None,
    *,
    fan_countries: Sequence[str] | None = None,
    n_fan_countries: int = 4,
    fan_horizons: Sequence[int] | None = None,
    max_fan_horizons: int = 4,
    fan_note: str = "",
    model_order: Sequence[str] = (),
    derived: DerivedSettings | None = None,
    window_size: int | None = None,
    mcs: tuple[float, int, int] = (0.1, 1000, 0),
) -> AssembleResult:
    """Run the stage (see the module docstring).

    `expected` (MODEL, COUNTRY, HORIZON, QUANTILE, WINDOW_END) lists the fits the config asked
    for: those without a forecast are listed as missing; train rows outside it are left out.
    Fan charts: `fan_countries`, else the first `n_fan_countries` alphabetically; `fan_horizons`,
    else at most `max_fan_horizons` spread from the shortest to the longest horizon; `fan_note`
    (why these countries) goes on the report. `model_order` fixes each model's chart colour.
    `derived`: the combo and calibrated rows and the first scored origin (warm-up origins
    feed the calibrators, then leave every table); `window_size` sets the tracker's scale
    (the target's std over each origin's window). `mcs`: (size, reps, seed) of the MCS.
    """
    output_dir = Path(output_dir)
    for name, value in (
        ("n_fan_countries", n_fan_countries),
        ("max_fan_horizons", max_fan_horizons),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    idle = assemble_fork.IdleMeter()  # is a core free for a fork? (below)
    frame = read_forecasts(output_dir)
    release_free_memory()  # the shards' Arrow buffers, kept by the pool: not under reconcile's
    targets = sorted(frame["TARGET"].dropna().unique().tolist())
    if targets and targets != [target]:
        raise ValueError(
            f"target must match the TARGET of the train shards {targets} (stale shards from another "
            f"target?); got {target!r}"
        )
    frame, missing, n_unexpected = reconcile(frame, expected)
    del expected  # a row per expected fit: not needed again (the caller passes it, not keeps it)
    missing = label_failed(missing, read_failed_fits(output_dir), FIT_KEY)  # `failed`, not `absent`
    if derived is not None:
        scale = None
        if derived.calibration is not None and window_size is not None:
            panel = pd.read_parquet(output_dir / PANEL_FILE, columns=[COUNTRY, TIME, "y"])
            scale = window_scale(panel.astype({COUNTRY: "string"}), window_size)
        adds_rows = bool(derived.combo_members) or derived.calibration is not None
        frame = derive(frame, derived, scale)
        if adds_rows:  # else derive only dropped warm-up rows: still in schema and order
            frame = lean_frame(conform_forecasts(frame))
        if derived.score_from is not None:
            missing = missing.loc[missing["WINDOW_END"] >= derived.score_from]
            missing = missing.reset_index(drop=True)
    if frame.empty:  # every fit failed or gave NaN: say so, and write (or remove) nothing
        raise no_forecasts(output_dir, missing)
    for model in frame["MODEL"].unique().tolist():
        check_name("MODEL", model)  # before anything is written
    fans = fan_selection(frame, fan_countries, n_fan_countries, fan_horizons, max_fan_horizons)
    fdir, rdir = output_dir / "forecasts", output_dir / "reports"
    # a fork of this process (the second core, the rows shared copy-on-write) computes the
    # test tables and the decomposition at scale, then renders charts, while this one writes
    # the forecast tables and computes the metric tables
    fork = None
    tests: Future[bytes] | None = None
    if len(frame) >= FORK_TESTS_MIN_ROWS:
        fork = assemble_fork.start(frame, idle, "the test tables and charts")
    if fork is not None:
        # ~20x the idle machine's time: only a stuck child waits this long (then done here)
        timeout = max(assemble_fork.REPLY_TIMEOUT_S, len(frame) * 20e-6)
        tests = fork.submit_async(test_tables_ipc, *mcs, timeout_s=timeout)
    charts = None
    try:
        charts = chart_stage.plan_charts(output_dir, frame, benchmark, fans, model_order)
        if fork is not None:  # queued now: the fork takes them as soon as its tables are done
            charts.start(fork)
        written = write_forecast_tables(fdir, frame, missing)
        forecast_files = written[:-2]
        frame = frame.drop(columns=list(WRITTEN_ONLY))  # 16 of a lean row's ~70 bytes
        # the tables' freed Arrow buffers stay in Arrow's pool and the C heap unless handed
        # back: ~350 MiB at 2.2M fits under the metric steps' working set (their peak -20 %)
        release_free_memory()
        if fork is None:  # charts only: a fork of this process takes some where they are a few
            charts.start_forked(frame, idle)
        tables, metric_files = _write_metrics(
            output_dir, frame, missing, n_unexpected, benchmark, mcs, tests
        )
        written += metric_files
        images = charts.finish(frame)
    except BaseException:
        if fork is not None:
            fork.abort()  # first: the chart feeder may be waiting on it
        raise
    finally:
        if charts is not None:
            charts.close()
        if fork is not None:
            fork.close()
    written += [rdir / image.src for image in images]

    # --- report ----------------------------------------------------------------------------
    html = render_report(
        tables,
        images,
        title=f"{target}: quantile forecast evaluation",
        summary=report_summary(output_dir, frame, missing, n_unexpected, benchmark),
        missing=missing,
        benchmark=benchmark,
        fan_note=fan_note_line(fans, fan_note),
    )
    write_text(rdir / "index.html", html)
    written.append(rdir / "index.html")

    removed = remove_stale(output_dir, written)
    log.info("assemble: %d forecast rows, %d tables, %d missing fits, %d stale files removed",
             len(frame), len(forecast_files), len(missing), len(removed))  # fmt: skip
    return AssembleResult(
        forecast_files=tuple(forecast_files),
        all_forecasts=fdir / "all.parquet",
        missing=fdir / "missing.parquet",
        metrics=output_dir / "metrics.json",
        metrics_summary=output_dir / "metrics_summary.json",
        metrics_headline=output_dir / "metrics_headline.json",
        tables=tuple(rdir / "tables" / f"{name}.parquet" for name in tables),
        images=tuple(rdir / image.src for image in images),
        report=rdir / "index.html",
        n_rows=len(frame),
        n_missing=len(missing),
        n_unexpected=n_unexpected,
        removed=tuple(removed),
    )


def _write_metrics(
    output_dir: Path,
    frame: pd.DataFrame,
    missing: pd.DataFrame,
    n_unexpected: int,
    benchmark: str,
    mcs: tuple[float, int, int],
    tests: Future[bytes] | None = None,
) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """metrics*.json, the parquet metric tables and the dvc plot data; the coverage test
    tables and the decomposition from `tests` (the fork's `test_tables_ipc`) where given."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # see coverage_test_tables
        # the metric columns only, MODEL and COUNTRY as codes: what every step below reads
        scoring = evaluate.compact_frame(frame)
        tables = evaluate.metric_tables(scoring, benchmark, key_dtypes=schema_dtypes(frame))
        metrics = metrics_json.compute_metrics(scoring, benchmark, tables=tables)
    size = mcs[0]
    tested = _forked(tests)
    tests_tables = test_tables(scoring, *mcs) if tested is None else tables_from_ipc(tested)
    metrics["fits"] = {"rows": len(frame), "missing": len(missing), "unexpected": n_unexpected}
    metrics.update(metrics_json.test_metrics(tests_tables, size))
    tables.update(tests_tables)
    write_json(output_dir / "metrics.json", metrics)
    summary = metrics_json.summary_metrics(scoring, benchmark, tables=tables)
    del scoring
    write_json(output_dir / "metrics_summary.json", summary)
    # key order kept (not write_json's sorted keys): it is `dvc exp show`'s column order
    headline = json.dumps(metrics_json.headline_metrics(summary, tables), indent=2, allow_nan=False)
    write_text(output_dir / "metrics_headline.json", headline + "\n")
    paths = [output_dir / f"metrics{part}.json" for part in ("", "_summary", "_headline")]
    for name, table in tables.items():
        paths.append(output_dir / "reports" / "tables" / f"{name}.parquet")
        write_parquet(paths[-1], table)
    # a disabled model keeps an empty shard: its (empty) column keeps `dvc plots` field lists valid
    shard_models = [p.stem for p in (output_dir / "train").glob("*.parquet")]
    models = sorted({*shard_models, *frame["MODEL"].unique().tolist()})
    paths += write_plot_data(output_dir / "reports" / "plots", tables, models)
    return tables, paths


def _forked(future: Future[bytes] | None) -> bytes | None:
    """The fork's answer, or None where it has none (none asked, or it died or hung)."""
    if future is None:
        return None
    try:
        return future.result()
    except BrokenProcessPool as exc:  # killed for memory, say: computed here instead
        log.warning("assemble: the forked process failed (%s); the test tables computed here", exc)
        return None
