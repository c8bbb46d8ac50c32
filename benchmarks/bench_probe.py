"""A cold probe at the seed study (issue 19, item 4: at most 10 s), this checkout vs a baseline.

The seed study (`experiment=seed`: real HICP, 38 countries, 72 origins, 4 horizons; ar_qr, lqr,
ensemble_nn, rw, climatology), prepared once; then `run_probe` with an empty probe cache
(every model and the worker baseline measured), in a fresh process per run, alternating
between the checkouts. Per run: wall time of `run_probe`, CPU seconds of the driver and of
its children (getrusage: the probe's child processes), the memory limit it planned and each
model's measured time per fit and peak.

Usage: python benchmarks/bench_probe.py [--baseline /work/main] [--repeats 2]
       [--out /tmp/bench_probe] [--json results.json] [--modes auto 1 2]

`--modes 1 2`: this checkout's probe with one job at a time and with two side by side (the
probe's choice fixed), to compare their time per fit and peaks; `auto`: its own choice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# one probe in this interpreter; prints a JSON line
PROBE = """
import json, os, resource, sys, time
from pathlib import Path

if __name__ == "__main__":
    out = Path(sys.argv[1])
    from pipeline.config.compose import compose_config
    from pipeline.stages.probe import run_probe
    from pipeline.stages.prepare import prepare

    config = compose_config(["experiment=seed", f"runtime.output_dir={out}"])
    if not (out / "data" / "prepared" / "panel.parquet").exists():
        prepare(config, Path.cwd())
    if sys.argv[2] != "auto":  # jobs at once, fixed (this checkout's ProbeChild only)
        import pipeline.stages.probe as probe_stage
        probe_stage.ProbeChild.parallel = int(sys.argv[2])
    import logging
    said = []
    class Said(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())
    logging.getLogger("pipeline.probe").addHandler(Said())
    logging.getLogger("pipeline.probe").setLevel(logging.INFO)
    s0, c0, t0 = resource.getrusage(0), resource.getrusage(-1), time.perf_counter()
    plan = run_probe(config)
    wall = time.perf_counter() - t0
    s1, c1 = resource.getrusage(0), resource.getrusage(-1)
    cpu = lambda a, b: (b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)
    models = {m: {"seconds_per_fit": p.seconds_per_fit, "peak_mb": p.peak_mb}
              for m, p in plan.models.items()}
    print(json.dumps({"wall_s": wall, "driver_cpu_s": cpu(s0, s1), "children_cpu_s": cpu(c0, c1),
                      "memory_limit_mb": plan.memory_limit_mb, "baseline_mb": plan.baseline_mb,
                      "models": models,
                      "jobs_at_once": [m for m in said if "at a time" in m]}))
"""


def probe_once(checkout: Path, out: Path, cache: Path, mode: str = "auto") -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)  # cold: nothing measured before
    env = {**os.environ, "PYTHONPATH": str(checkout), "QPIPE_PROBE_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), mode],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe in {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.out)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    # (name, checkout, jobs at once: "auto" = the probe's own choice, or fixed)
    variants = [(f"this ({m})", ROOT, m) for m in args.modes]
    if args.baseline:
        variants = [("baseline", Path(args.baseline).resolve(), "auto"), *variants]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    loads = [os.getloadavg()[0]]
    for r in range(args.repeats):
        for name, checkout, mode in variants:
            slug = name.replace(" ", "").replace("(", "-").replace(")", "")
            row = probe_once(checkout, base / slug, base / f"cache-{slug}", mode)
            runs[name].append(row)
            loads.append(os.getloadavg()[0])
            print(json.dumps({"repeat": r, "checkout": name, **row}), flush=True)
    result = {"runs": runs, "load_average": [min(loads), max(loads)]}
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def report(result: dict[str, Any]) -> str:
    lo, hi = result["load_average"]
    lines = [
        f"cold probe, seed study, medians of {len(next(iter(result['runs'].values())))} runs "
        f"(1-min load average {lo:.1f}-{hi:.1f})",
        "",
        "| checkout | wall s | driver CPU s | children CPU s | memory limit MiB | baseline MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in result["runs"].items():

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        lines.append(
            f"| {name} | {med('wall_s'):.1f} | {med('driver_cpu_s'):.1f} | "
            f"{med('children_cpu_s'):.1f} | {med('memory_limit_mb'):.0f} | {med('baseline_mb'):.0f} |"
        )
    lines += [
        "",
        "| checkout | model | s/fit (median) | peak MiB (median) |",
        "|---|---|---:|---:|",
    ]
    for name, rows in result["runs"].items():
        for model in rows[0]["models"]:
            spf = statistics.median(r["models"][model]["seconds_per_fit"] for r in rows)
            peak = statistics.median(r["models"][model]["peak_mb"] for r in rows)
            lines.append(f"| {name} | {model} | {spf:.4g} | {peak:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default=None, help="another checkout (e.g. /work/main)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="/tmp/bench_probe")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["auto"],
        help="jobs at once in this checkout's probe: auto (its choice) and/or fixed numbers",
    )
    main(parser.parse_args())
