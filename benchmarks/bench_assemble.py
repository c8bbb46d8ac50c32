"""assemble's cost at seed scale and at a million fits (issue 18 item 5, issue 19 item 4).

Two synthetic forecast tables in train's output schema (pipeline/schema.py), built in memory
with numpy (seeded; the actuals a random walk per country, each model's quantile forecasts the
actual plus model-specific noise and a level offset, so every metric has work to do):

- seed:  38 countries x 72 origins (2018-01..2023-12) x horizons 1, 3, 6, 12 x levels
         0.1/0.5/0.9, models ar_qr, lqr, ensemble_nn, rw, climatology (10,944 fits per model,
         164k rows), plus the combo assemble derives (ar_qr, lqr, ensemble_nn);
- 1m:    550 countries x 228 origins (2005-01..2023-12) x 4 horizons x 2 models (ar_qr, rw):
         1,003,200 fits x 3 levels = 3.0M rows (the shape of issue 18's 1M-fit rw study, with
         the benchmark model beside it so the relative tables have work).

For each table it times assemble's pure steps (derive, metric tables, metrics.json, coverage
tests, MCS, pinball decomposition) on the in-memory frame, then the whole `assemble()` stage on
an output dir holding the table as train shards plus a prepared panel (reading, reconciling
with the expected fits, writing every table, charts from scratch and the report).

Usage: python benchmarks/bench_assemble.py [--scales seed 1m] [--repeats 3] [--profile DIR]
       [--json results.json] [--baseline CHECKOUT] [--no-whole]
`--profile DIR` writes a pyinstrument text profile of one whole assemble per scale there;
`--baseline CHECKOUT` first runs the same benchmark on another checkout's `pipeline` (e.g. a
`git archive` of the commit before, in a subprocess) and prints the ratios baseline / this.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(os.environ.get("BENCH_ASSEMBLE_ROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))

from pipeline.evaluation import coverage_tests, decomposition, mcs, metrics_json  # noqa: E402
from pipeline.evaluation import metrics as evaluate  # noqa: E402
from pipeline.evaluation.derived import DerivedSettings, derive  # noqa: E402
from pipeline.io import write_parquet  # noqa: E402
from pipeline.schema import PANEL_FILE, conform_forecasts  # noqa: E402
from pipeline.stages import assemble as stage  # noqa: E402

QUANTILES = (0.1, 0.5, 0.9)
HORIZONS = (1, 3, 6, 12)
SCALES: dict[str, dict[str, Any]] = {
    "seed": {
        "countries": 38,
        "origins": ("2018-01", 72),
        "models": ("ar_qr", "lqr", "ensemble_nn", "rw", "climatology"),
        "combo": ("ar_qr", "lqr", "ensemble_nn"),
    },
    # a smoke test of the script itself (seconds)
    "tiny": {"countries": 4, "origins": ("2019-01", 36), "models": ("ar_qr", "rw"), "combo": None},
    "1m": {"countries": 550, "origins": ("2005-01", 228), "models": ("ar_qr", "rw"), "combo": None},
}
Z = {0.1: -1.2815515655446004, 0.5: 0.0, 0.9: 1.2815515655446004}


def synthetic_panel(n_countries: int, first: str, n_months: int, seed: int = 0) -> pd.DataFrame:
    """COUNTRY, TIME, y_raw, y: a random walk per country, 12 months longer than the origins
    so the long horizons have actuals (the last ones stay unobserved, as in a real study)."""
    rng = np.random.default_rng(seed)
    months = pd.date_range(first, periods=n_months, freq="MS")
    y = np.cumsum(rng.normal(0.0, 0.4, size=(n_countries, n_months)), axis=1) + 2.0
    countries = np.array([f"C{i:04d}" for i in range(n_countries)])
    panel = pd.DataFrame(
        {
            "COUNTRY": np.repeat(countries, n_months),
            "TIME": np.tile(months.to_numpy(), n_countries),
            "y_raw": y.ravel(),
        }
    )
    panel["y"] = panel["y_raw"]
    return panel.astype({"COUNTRY": "string", "TIME": "datetime64[ns]"})


def synthetic_forecasts(scale: str, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train's rows without ACTUAL, the panel) of one scale; see the module docstring."""
    spec = SCALES[scale]
    first, n_origins = spec["origins"]
    n_c = spec["countries"]
    panel = synthetic_panel(n_c, first, n_origins + max(HORIZONS) - 6, seed)
    origins = pd.date_range(first, periods=n_origins, freq="MS").to_numpy()
    y = panel["y_raw"].to_numpy().reshape(n_c, -1)
    rng = np.random.default_rng(seed + 1)
    parts = []
    c, o, h, q = np.meshgrid(
        np.arange(n_c), np.arange(n_origins), np.array(HORIZONS), np.array(QUANTILES), indexing="ij"
    )
    c, o, h, q = c.ravel(), o.ravel(), h.ravel(), q.ravel()
    target_month = o + h
    inside = target_month < y.shape[1]
    truth = np.where(inside, y[c, np.minimum(target_month, y.shape[1] - 1)], y[c, o])
    z = np.vectorize(Z.get)(q)
    countries = np.array([f"C{i:04d}" for i in range(n_c)])
    time = pd.DatetimeIndex(origins[o]) + pd.to_timedelta(0, "D")
    time = (pd.PeriodIndex(time, freq="M") + h).to_timestamp().to_numpy()
    for m, model in enumerate(spec["models"]):
        sd = 0.3 + 0.1 * m + 0.05 * h
        center = truth + rng.normal(0.0, 0.25 + 0.05 * m, size=truth.size)
        forecast = center + z * sd + rng.normal(0.0, 0.02, size=truth.size)
        forecast[rng.random(truth.size) < 0.001] = np.nan  # a few fits without a forecast
        parts.append(
            pd.DataFrame(
                {
                    "TIME": time,
                    "COUNTRY": countries[c],
                    "TARGET": "prc_hicp_manr_CP00",
                    "MODEL": model,
                    "QUANTILE": q,
                    "HORIZON": h,
                    "WINDOW_START": origins[np.maximum(o - 59, 0)],
                    "WINDOW_END": origins[o],
                    "FORECAST": forecast,
                }
            )
        )
    return pd.concat(parts, ignore_index=True), panel


def with_actuals(rows: pd.DataFrame, panel: pd.DataFrame) -> pd.DataFrame:
    joined = rows.merge(
        panel[["COUNTRY", "TIME", "y_raw"]].rename(columns={"y_raw": "ACTUAL"}),
        on=["COUNTRY", "TIME"],
        how="left",
    )
    return conform_forecasts(joined)


def write_study(out: Path, rows: pd.DataFrame, panel: pd.DataFrame) -> None:
    """An output dir as train and prepare leave it: train/{model}.parquet and the panel."""
    for model, part in rows.groupby("MODEL", sort=True):
        write_parquet(out / "train" / f"{model}.parquet", part.reset_index(drop=True))
    write_parquet(out / PANEL_FILE, panel)


CPU: dict[str, float] = {}  # median process CPU seconds of the last `timed` call per label


def timed(fn: Callable[[], Any], repeats: int, label: str = "") -> tuple[float, Any]:
    """Median wall seconds over `repeats` calls, and the last call's result; the median CPU
    seconds of this process go to CPU[label] (the machine is shared: wall time includes
    waiting for a core, CPU time does not)."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU[label] = statistics.median(cpu)
    return statistics.median(times), result


def step_times(
    frame: pd.DataFrame, spec: dict[str, Any], repeats: int
) -> dict[str, tuple[float, float]]:
    """assemble's pure steps, each timed on its own in the order assemble runs them, with one
    BLAS thread for both checkouts (conservative for the baseline, which ran with two):
    {step: (median wall s, median CPU s)}."""
    from threadpoolctl import threadpool_limits

    settings = DerivedSettings(combo_members=spec["combo"])
    raw, frame = frame, conform_forecasts(derive(frame, settings))
    periods = evaluate.period_frames(frame)
    tables = evaluate.metric_tables(frame, "ar_qr")
    steps: dict[str, Callable[[], Any]] = {
        "derive (combo)": lambda: conform_forecasts(derive(raw, settings)),
        "metric_tables": lambda: evaluate.metric_tables(frame, "ar_qr"),
        "metrics.json + summary": lambda: (
            metrics_json.compute_metrics(frame, "ar_qr", tables=tables),
            metrics_json.summary_metrics(frame, "ar_qr", tables=tables),
        ),
        "coverage tests pooled": lambda: [
            coverage_tests.coverage_tests(p, by=["MODEL", "HORIZON", "QUANTILE"])
            for p in periods.values()
        ],
        "coverage tests by country": lambda: [
            coverage_tests.coverage_tests(p, by=["MODEL", "COUNTRY", "HORIZON", "QUANTILE"])
            for p in periods.values()
        ],
        "mcs": lambda: [mcs.mcs_table(p, size=0.1, reps=1000, seed=0) for p in periods.values()],
        "pinball decomposition": lambda: decomposition.pinball_decomposition(frame),
    }
    out = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for name, step in steps.items():
            wall, _ = timed(step, repeats, name)
            out[name] = (wall, CPU[name])
    return out


def whole_assemble(out: Path, rows: pd.DataFrame, spec: dict[str, Any]) -> Callable[[], Any]:
    expected = rows[list(stage.FIT_KEY)]
    settings = DerivedSettings(combo_members=spec["combo"])

    def run() -> Any:
        shutil.rmtree(out / "reports", ignore_errors=True)  # charts from scratch, as dvc does
        (out / "logs" / "charts.json").unlink(missing_ok=True)
        return stage.assemble(out, "prc_hicp_manr_CP00", expected=expected, derived=settings)

    return run


def run_baseline(checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    """This benchmark on `checkout`'s pipeline, in a subprocess; its JSON results."""
    out = Path(tempfile.mkdtemp(prefix="bench_assemble_base_")) / "base.json"
    command = [sys.executable, __file__, "--scales", *args.scales, "--repeats", str(args.repeats)]
    command += ["--json", str(out)] + (["--no-whole"] if args.no_whole else [])
    env = {**os.environ, "BENCH_ASSEMBLE_ROOT": str(checkout), "PYTHONPATH": str(checkout)}
    print(f"baseline: {checkout}")
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text())


def measure(scale: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = SCALES[scale]
    rows, panel = synthetic_forecasts(scale)
    frame = with_actuals(rows, panel)
    n_fits = len(rows) // len(QUANTILES)
    print(f"[{scale}] {n_fits:,} fits, {len(rows):,} rows; load {os.getloadavg()[0]:.2f}")
    steps = step_times(frame, spec, args.repeats)
    print(f"  {'step':28s} {'wall s':>8s} {'CPU s':>8s}")
    for name, (wall, cpu) in steps.items():
        print(f"  {name:28s} {wall:8.2f} {cpu:8.2f}")
    result: dict[str, Any] = {"fits": n_fits, "rows": len(rows), "steps": steps}
    if args.no_whole:
        return result
    with tempfile.TemporaryDirectory(prefix="bench_assemble_") as tmp:
        out = Path(tmp)
        write_study(out, rows, panel)
        run = whole_assemble(out, rows, spec)
        whole, done = timed(run, args.repeats, "whole")
        print(f"  {'whole assemble()':28s} {whole:8.2f} {CPU['whole']:8.2f} ({done.n_rows:,} rows)")
        result["assemble"] = (whole, CPU["whole"])
        # again on the same output dir: the charts are unchanged, so not rendered (a rerun)
        again, _ = timed(
            lambda: stage.assemble(
                out, "prc_hicp_manr_CP00", expected=rows[list(stage.FIT_KEY)],
                derived=DerivedSettings(combo_members=spec["combo"]),
            ),
            args.repeats, "again",
        )  # fmt: skip
        print(f"  {'assemble() again, charts kept':28s} {again:8.2f} {CPU['again']:8.2f}")
        result["assemble_again"] = (again, CPU["again"])
        if args.profile is not None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.005)
            profiler.start()
            run()
            profiler.stop()
            args.profile.mkdir(parents=True, exist_ok=True)
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            (args.profile / f"assemble_{scale}.txt").write_text(text)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["seed", "1m"], choices=list(SCALES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--no-whole", action="store_true", help="the steps only")
    args = parser.parse_args()
    results: dict[str, Any] = {"uptime": subprocess.getoutput("uptime"), "cpus": os.cpu_count()}
    print(results["uptime"])
    base = run_baseline(args.baseline, args) if args.baseline is not None else None
    for scale in args.scales:
        results[scale] = measure(scale, args)
        if base is not None:
            results[scale]["baseline"] = base[scale]
            mine, theirs = results[scale], base[scale]
            pairs = {**{k: (theirs["steps"][k], v) for k, v in mine["steps"].items()}}
            if "assemble" in mine:
                pairs["whole assemble()"] = (theirs["assemble"], mine["assemble"])
            print(f"[{scale}] baseline / this, median wall s and CPU s:")
            for name, (b, m) in pairs.items():
                print(f"  {name:28s} wall {b[0]:7.2f} / {m[0]:6.2f} = {b[0] / m[0]:5.1f}x"
                      f"   CPU {b[1]:7.2f} / {m[1]:6.2f} = {b[1] / m[1]:5.1f}x")  # fmt: skip
    results["uptime_end"] = subprocess.getoutput("uptime")
    print(results["uptime_end"])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
