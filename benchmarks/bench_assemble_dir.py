"""assemble alone on an existing output dir, this tree against a baseline checkout, in one run
(issue 18 items 5 and 6: assemble at a million fits, its time and its peak memory).

Make the output dir once, e.g. the 1M-fit rw study: `python benchmarks/bench_scale.py --rw 1100
--out /tmp/asm` (its dir is /tmp/asm/rw1100), then

    python benchmarks/bench_assemble_dir.py DIR [DIR ...] --baseline CHECKOUT [--repeats 2]

`CHECKOUT` is another tree's root (e.g. `git archive <commit> | tar -x -C /tmp/base`). Each
repeat runs, alternating baseline and this tree, one fresh Python process that loads the dir's
config.yaml and calls `assemble_study` (what `python -m pipeline stage assemble` runs; nothing
is retrained). Per run: wall and CPU seconds of the process (rusage of the child: CPU is far
less sensitive than wall to other load on a shared machine), the child's own peak memory
(VmHWM, read in the child at the end), its fork's (or a baseline's helper's) max RSS and the
load average. CPU is the child's and its reaped children's: assemble's fork (the charts and,
at scale, the test tables and the decomposition on the second core) counts; `own_cpu_s` is
the CPU of assemble_study in the child alone (its critical path when a second core is free:
the fork works beside it). Each tree runs on its own copy of DIR (made once, under `--work`), so each keeps its own chart manifest: `--charts kept` (default) measures a rerun whose charts are
unchanged and skipped (after a first run that renders them, not timed), `--charts fresh`
deletes `logs/charts.json` before each run, so every chart renders (a fresh output dir, as
under `dvc repro`). The outputs of the two trees must be identical (compare the copies
separately). Medians over the repeats; ratios baseline / this.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
from pathlib import Path
out = Path(sys.argv[1])
from pipeline.config import validate
from pipeline.config.compose import compose_file
config = validate(compose_file(out / "config.yaml", [f"runtime.output_dir={out}"]))
if sys.argv[2] in ("always", "never"):  # a second process however busy (idle) the machine
    import importlib
    floor = float("-inf") if sys.argv[2] == "always" else float("inf")
    for name in ("assemble_fork", "assemble_helper"):  # this tree's, or a baseline's
        try:
            importlib.import_module(f"pipeline.stages.{name}").MIN_IDLE_CPUS = floor
        except ImportError:
            pass
from pipeline.stages.study import assemble_study
cpu0 = time.process_time()
assemble_study(config)
own = time.process_time() - cpu0
status = Path("/proc/self/status").read_text().split("\\n")
hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
import resource  # the largest reaped child: assemble's fork (shared pages it touched count)
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"vmhwm_mib": hwm / 1024, "own_cpu_s": own, "child_peak_mib": kids}))
"""


def run_once(
    tree: Path, out: Path, fresh_charts: bool = False, helper: str = "auto"
) -> dict[str, Any]:
    if fresh_charts:
        (out / "logs" / "charts.json").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), helper],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"assemble failed in {tree} on {out}")
    child = json.loads(stdout.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "own_cpu_s": child["own_cpu_s"],  # assemble_study in the child itself, no helper
        "peak_mib": child["vmhwm_mib"],
        "child_peak_mib": child["child_peak_mib"],  # its fork's (or helper's) max RSS
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--charts", choices=("kept", "fresh"), default="kept")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_assemble_dir"))
    parser.add_argument(
        "--helper",
        choices=("auto", "always", "never"),
        default="auto",
        help="always: either tree starts its fork (or helper) even on a busy machine; never: "
        "neither does (every step in the driver: its worst-case peak, as on a loaded machine)",
    )
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this": ROOT}
    results: dict[str, Any] = {
        "uptime_start": os.getloadavg(),
        "charts": args.charts,
        "helper": args.helper,
    }
    fresh = args.charts == "fresh"
    for out in args.dirs:
        copies = {name: args.work / name / out.resolve().name for name in trees}
        for name, copy in copies.items():  # each tree its own outputs and chart manifest
            if copy.exists():
                shutil.rmtree(copy)
            shutil.copytree(out, copy, symlinks=True)
            if not fresh:  # render this tree's charts once, untimed
                run_once(trees[name], copy)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run_once(tree, copies[name], fresh, args.helper))
                print(out.name, name, json.dumps(runs[name][-1]), flush=True)
        medians = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for name, rs in runs.items()
        }
        ratios = {
            k: medians["baseline"][k] / medians["this"][k]
            for k in ("wall_s", "cpu_s", "own_cpu_s", "peak_mib")
        }
        results[str(out)] = {"runs": runs, "medians": medians, "ratios": ratios}
        print(out.name, "medians", json.dumps(medians), "ratios", json.dumps(ratios), flush=True)
    results["uptime_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
