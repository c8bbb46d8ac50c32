"""CPU seconds to render a study's charts, this checkout against others (issue 18, fourth pass).

Renders every chart assemble would render for a finished run (its forecasts/all.parquet: the
two metric charts and one fan chart per (country, horizon) of the run's fan selection, as
`pipeline.stages.charts.render_png` does), once each, in a fresh process per checkout and
repeat, alternating checkouts, and reports per checkout the medians over repeats of: the first
chart (the pinball chart, with the process's first fonts and caches), all charts (CPU seconds
of the process, `time.process_time`, which a loaded machine distorts far less than wall
time), and the PNG bytes written.

Usage: python benchmarks/bench_charts.py RUN_DIR [--baseline CHECKOUT ...] [--repeats 3]
       [--countries DE FR ...]  (fan charts of these countries only; default: every country)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs in the checkout under test (its own pipeline package): prints one JSON line
CHILD = r"""
import json, sys, time
import pandas as pd
from pipeline.evaluation import metrics as evaluate
from pipeline.stages import charts

frame = pd.read_parquet(sys.argv[1])
order = json.loads(sys.argv[2])
bench = {"benchmark": "ar_qr"}
fans = sorted(set(zip(frame["COUNTRY"].astype(str), frame["HORIZON"].astype(int))))
fans = [(c, h) for c, h in fans if not sys.argv[3:] or c in sys.argv[3:]]
specs = [("pinball", bench), ("coverage", bench)]
specs += [("fan", {**bench, "country": c, "horizon": h}) for c, h in fans]
compact = evaluate.compact_frame(frame)
times, size = [], 0
for kind, args in specs:  # one pass, as assemble renders them: no chart seen before
    t0 = time.process_time()
    size += len(charts.render_png(frame if kind == "fan" else compact, kind, args, order))
    times.append(time.process_time() - t0)
print(json.dumps({"charts": len(specs), "first_s": times[0], "all_s": sum(times), "bytes": size}))
"""


def measure(checkout: Path, table: Path, order: list[str], countries: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(table), json.dumps(order), *countries],
        cwd=checkout, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("run_dir", type=Path, help="a finished run's output dir")
    parser.add_argument("--baseline", nargs="*", default=[], help="other checkouts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--countries", nargs="*", default=[], help="fan charts of these only")
    parser.add_argument("--order", nargs="*", default=["ar_qr", "lqr", "ensemble_nn", "rw", "climatology"])  # fmt: skip
    args = parser.parse_args()
    table = (args.run_dir / "forecasts" / "all.parquet").resolve()
    checkouts = [Path(b).resolve() for b in args.baseline] + [ROOT]
    rows: dict[Path, list[dict]] = {c: [] for c in checkouts}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for checkout in checkouts:
            rows[checkout].append(measure(checkout, table, args.order, args.countries))
            loads.append(os.getloadavg()[0])
    base = statistics.median(r["all_s"] for r in rows[checkouts[0]])
    print(f"{rows[ROOT][0]['charts']} charts of {table}, {args.repeats} repeats, "
          f"1-min load average {min(loads):.1f}-{max(loads):.1f}\n")  # fmt: skip
    print(
        "| checkout | first chart CPU s | all charts CPU s (median) | vs first checkout | PNG bytes |"
    )
    print("|---|---:|---:|---:|---:|")
    for checkout, runs in rows.items():
        first = statistics.median(r["first_s"] for r in runs)
        every = statistics.median(r["all_s"] for r in runs)
        print(f"| {checkout} | {first:.3f} | {every:.3f} | {every / base:.2f}x | {runs[0]['bytes']:,} |")  # fmt: skip


if __name__ == "__main__":
    main()
