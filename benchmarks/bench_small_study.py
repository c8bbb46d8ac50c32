"""A small ar_qr study end to end vs a plain scikit-learn loop over its fits (issue 13, item 5).

The study: 3 countries of the shipped real data (data/eurostat/hicp_manr.csv.gz), the seed's
72 origins (2018-01..2023-12) and 4 horizons, ar_qr only (rw, climatology, lqr, ensemble_nn
and the combo off): 864 fits. Timed, each repeat:

- cold: `python -m pipeline run ...` in a fresh output dir with an empty probe cache (the probe
  measures), wall time of the whole command (interpreter start to exit);
- warm probe: the same command in another fresh output dir, the probe cache kept (reused);
- rerun: the warm command once more in the same output dir, nothing changed: every stage is
  skipped, so this is the fixed cost of starting a study (interpreter, imports, config,
  the stage records' checks), issue 18 item 6's "starts in about a second";
- sklearn: the same 864 fits (windows, features and targets built by the project's code:
  prepare + build_groups with the ar_qr adapter), one QuantileRegressor(quantile=q, alpha=0,
  solver="highs") per fit and quantile on the fit's complete rows, predicting at the origin;
  wall and CPU time of the loop only (data preparation not counted on that side).

Ratio = sklearn loop wall / pipeline wall (target >= 3x), and the same with CPU seconds (the
pipeline's whole process tree: the driver, its child, the probe's child; getrusage of reaped
children), which a loaded machine distorts far less. Medians of the repeats. `--baseline
CHECKOUT` runs the same cold and warm commands with another checkout's code (e.g. the commit
before a change), in the same repeats. Also checks that the forecasts agree (sklearn's, sorted
per fit, against forecasts/all.parquet).

Usage: python benchmarks/bench_small_study.py [--countries DE FR IT] [--repeats 3]
       [--baseline /work/main] [--out /tmp/bench_small] [--json results.json] [--when-idle]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from study_overrides import AR_QR_ONLY, QUIET

ROOT = Path(__file__).resolve().parents[1]


def overrides(countries: list[str], out: Path) -> list[str]:
    return [
        *AR_QR_ONLY,
        f"data.countries=[{','.join(countries)}]",
        f"runtime.output_dir={out}",
        *QUIET,
    ]


def run_study(
    countries: list[str], out: Path, cache: Path, checkout: Path = ROOT
) -> dict[str, Any]:
    """One `python -m pipeline run` of `checkout`'s code with its own probe cache; wall time,
    CPU seconds of its process tree and stage timings."""
    env = {**os.environ, "QPIPE_PROBE_CACHE": str(cache), "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "pipeline", "run", *overrides(countries, out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    timings = json.loads((out / "logs" / "timings.json").read_text())
    # the stages' info lines go to the run's log files, not to a quiet run's stderr
    logs = done.stderr + "".join(p.read_text() for p in sorted((out / "logs").glob("*.log")))
    split = re.search(r"\((\d+) rendered by the (?:helper|forked) process\)", logs)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "stages": {k: v["seconds"] for k, v in timings.items()},
        "reused": "reused measurement" in logs,
        "in_driver": "in the driver, no cluster" in logs,
        # charts rendered by a second process (the fork or the helper: a core was idle)
        "charts_elsewhere": int(split.group(1)) if split else 0,
    }


def build_fits(countries: list[str], out: Path):
    """The study's ar_qr fit groups, built by the project's own code."""
    from pipeline.config.compose import compose_config
    from pipeline.data.prepared import load_panel
    from pipeline.models.plugins.registry import get_adapter
    from pipeline.runtime.fits.fit_groups import build_groups
    from pipeline.stages.prepare import prepare

    os.chdir(ROOT)
    config = compose_config(overrides(countries, out))
    prepare(config, ROOT)
    return config, build_groups(load_panel(config.output_dir), config, get_adapter("ar_qr"))


def sklearn_loop(groups, quantiles) -> tuple[float, float, list[tuple[str, int, int, np.ndarray]]]:
    """(wall s, CPU s, forecasts per fit) of one QuantileRegressor per fit and quantile."""
    from sklearn.linear_model import QuantileRegressor

    out = []
    c0, t0 = time.process_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in groups:
            data = g.take(np.arange(len(g)))
            X, y, w, X_new = data["X"], data["y"], data["w"], data["X_new"]
            for i in range(len(g)):
                keep = w[i] > 0
                fc = []
                for q in quantiles:
                    model = QuantileRegressor(quantile=q, alpha=0, solver="highs")
                    model.fit(X[i][keep], y[i][keep])
                    fc.append(float(model.predict(X_new[i])[0]))
                out.append((str(g.countries[i][0]), int(g.origin[i]), int(g.horizon), np.sort(fc)))
    return time.perf_counter() - t0, time.process_time() - c0, out


def agreement(forecasts_path: Path, fits, quantiles) -> float:
    """max |ours - sklearn| over every forecast of the study."""
    import pandas as pd

    from pipeline.data.windows import month_start

    ours = pd.read_parquet(forecasts_path)
    ours = ours[ours["MODEL"] == "ar_qr"].set_index(
        ["COUNTRY", "WINDOW_END", "HORIZON", "QUANTILE"]
    )["FORECAST"]
    gap = 0.0
    for country, origin, h, fc in fits:
        for q, value in zip(quantiles, fc, strict=True):
            mine = ours.loc[(country, month_start(origin), h, float(q))]
            gap = max(gap, abs(float(mine) - value))
    return gap


def main(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.out)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    config, groups = build_fits(args.countries, base / "fits")
    quantiles = list(config.data.quantiles)
    n_fits = sum(len(g) for g in groups)
    kinds = ["cold", "warm", "rerun"]
    checkouts = {"": ROOT}
    if args.baseline:  # its runs first in each repeat, as labelled kinds of their own
        checkouts = {"baseline ": Path(args.baseline).resolve(), **checkouts}
        kinds = ["baseline cold", "baseline warm", "baseline rerun", *kinds]
    rows: list[dict[str, Any]] = []
    loads = [os.getloadavg()[0]]
    for r in range(args.repeats):
        row: dict[str, Any] = {"repeat": r}
        if args.when_idle:
            row["idle_before"] = wait_until_idle()
        for label, checkout in checkouts.items():
            tag = label.strip() or "this"
            cache = base / f"probe-cache-{tag}-{r}"  # empty: the cold run measures
            row[f"{label}cold"] = run_study(
                args.countries, base / f"{tag}-cold-{r}", cache, checkout
            )
            row[f"{label}warm"] = run_study(
                args.countries, base / f"{tag}-warm-{r}", cache, checkout
            )
            row[f"{label}rerun"] = run_study(  # the same dir again: every stage skipped
                args.countries, base / f"{tag}-warm-{r}", cache, checkout
            )
            loads.append(os.getloadavg()[0])
        sk_wall, sk_cpu, fits = sklearn_loop(groups, quantiles)
        row["sklearn_wall_s"], row["sklearn_cpu_s"] = sk_wall, sk_cpu
        row["idle_after"] = idle_cpus()
        loads.append(os.getloadavg()[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    gap = agreement(base / "this-warm-0" / "forecasts" / "all.parquet", fits, quantiles)
    med = {
        "sklearn_s": statistics.median(r["sklearn_wall_s"] for r in rows),
        "sklearn_cpu_s": statistics.median(r["sklearn_cpu_s"] for r in rows),
    }
    stages = sorted(rows[0]["warm"]["stages"])
    for kind in kinds:
        med[f"{kind}_s"] = statistics.median(r[kind]["wall_s"] for r in rows)
        med[f"{kind}_cpu_s"] = statistics.median(r[kind]["cpu_s"] for r in rows)
        for stage in stages:  # a skipped stage takes 0 s (the rerun's probe: not recorded)
            med[f"{kind}:{stage}"] = statistics.median(
                r[kind]["stages"].get(stage, 0.0) for r in rows
            )
    result = {
        "countries": args.countries,
        "fits": n_fits,
        "kinds": kinds,
        "repeats": rows,
        "median": med,
        "max_abs_forecast_gap": gap,
        "load_average": [min(loads), max(loads)],
    }
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def idle_cpus(seconds: float = 1.5) -> float:
    """The machine's idle CPUs over the next `seconds` (/proc/stat: idle + iowait)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_idle(share: float = 0.85) -> float:
    """Wait until `share` of every CPU was idle over 1.5 s (a shared machine: the chart fork
    and the helper run only beside an idle core); that idle figure."""
    while (idle := idle_cpus()) < share * (os.cpu_count() or 1):
        time.sleep(3)
    return idle


def report(result: dict[str, Any]) -> str:
    m = result["median"]
    stages = sorted({k.split(":", 1)[1] for k in m if ":" in k})
    lo, hi = result["load_average"]
    lines = [
        f"{result['fits']} ar_qr fits ({', '.join(result['countries'])}), "
        f"{len(result['repeats'])} repeats, medians, 1-min load average {lo:.1f}-{hi:.1f}; "
        f"max |ours - sklearn| forecast {result['max_abs_forecast_gap']:.1e}",
        "",
        "| run | wall s | CPU s | "
        + " | ".join(stages)
        + " | sklearn loop / run, wall | sklearn loop / run, CPU |",
        "|---|---:|---:|" + "---:|" * len(stages) + "---:|---:|",
    ]
    labels = {
        "cold": "cold (probe measured)",
        "warm": "warm probe (reused)",
        "rerun": "rerun of warm (every stage skipped)",
    }
    for kind in result["kinds"]:
        checkout, _, short = kind.rpartition(" ")
        label = f"{checkout} {labels[short]}".strip()
        cells = " | ".join(f"{m[f'{kind}:{s}']:.1f}" for s in stages)
        ratio, cpu_ratio = m["sklearn_s"] / m[f"{kind}_s"], m["sklearn_cpu_s"] / m[f"{kind}_cpu_s"]
        lines.append(
            f"| {label} | {m[f'{kind}_s']:.1f} | {m[f'{kind}_cpu_s']:.1f} | {cells} | "
            f"{ratio:.2f}x | {cpu_ratio:.2f}x |"
        )
    lines.append(
        f"| sklearn QuantileRegressor(highs) loop | {m['sklearn_s']:.1f} | "
        f"{m['sklearn_cpu_s']:.1f} |" + " |" * len(stages) + " 1.00x | 1.00x |"
    )
    # a second process renders charts only when a core was idle at assemble's start
    split = {
        kind: sum(1 for r in result["repeats"] if r[kind].get("charts_elsewhere", 0) > 0)
        for kind in result["kinds"]
    }
    n = len(result["repeats"])
    lines.append("")
    lines.append(
        "charts split with a second process: "
        + ", ".join(f"{kind} {k} of {n} runs" for kind, k in split.items())
    )
    idle = [
        f"{r['idle_before']:.1f}/{r['idle_after']:.1f}"
        for r in result["repeats"]
        if "idle_before" in r
    ]
    if idle:
        lines.append(f"idle CPUs before/after each repeat: {', '.join(idle)}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--countries", nargs="+", default=["DE", "FR", "IT"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="another checkout (e.g. /work/main)")
    parser.add_argument("--out", default="/tmp/bench_small")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--when-idle",
        action="store_true",
        help="start each repeat only when every core was 85%% idle over 1.5 s (a shared "
        "machine); each repeat records its idle CPUs before and after",
    )
    main(parser.parse_args())
