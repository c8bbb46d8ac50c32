"""Train's start for the rw study of N countries (N x 912 fits): the CPU seconds of the panel's
read and of the plan (`fit_groups`, loading the plan probe kept), each in a fresh process as
train's stage process does them.

Prepares the study into OUT unless its panel is there, then runs R child processes per tree
that each import train, read the panel as train reads it and call `fit_groups`; the first child
of a tree builds and keeps the plan (in `$QPIPE_PLAN_CACHE`, else OUT/plans-<tree>), as probe
would, and is not counted. With `--baseline DIR` (another checkout, e.g. `git archive main`) the
trees alternate. Prints each child's CPU seconds and peak RSS, then the medians.

Usage: python benchmarks/train_start.py N OUT [R] [--baseline DIR]
(issue 18 item 7, "Train's start": 1100 and 2400, R=5)
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

# what one child runs (from the tree's root): the phases as run_train does them
CHILD = """
import inspect, json, resource, sys, time
sys.path.insert(0, "benchmarks")
t = time.process_time
c0 = t()
import pipeline.stages.train
imported = t() - c0
import bench_scale as bs
from pathlib import Path
from pipeline.config import validate
from pipeline.config.compose import compose_dict
from pipeline.data.prepared import load_panel_columns
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.shared_plan import fit_groups
out, n = Path(sys.argv[1]), int(sys.argv[2])
config = validate(compose_dict(bs.rw_overrides(n, out)))
adapter = adapter_for(config, "rw")
c0 = t()
if "columns" in inspect.signature(load_panel_columns).parameters:  # as this tree's train reads it
    from pipeline.runtime.fits.fit_groups import plan_columns
    panel = load_panel_columns(out, [*plan_columns(config, adapter), "y_raw"])
else:
    panel = load_panel_columns(out)
c1 = t()
fits = sum(len(g) for g in fit_groups(panel, config, adapter))
c2 = t()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"import": imported, "panel": c1 - c0, "plan": c2 - c1, "fits": fits,
                  "peak_mib": peak}))
"""


def child(tree: Path, out: Path, n: int, plans: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "QPIPE_PLAN_CACHE": str(plans)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), str(n)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="countries (N x 912 fits)")
    parser.add_argument("out", type=Path, help="the study's output dir (prepared if needed)")
    parser.add_argument("repeats", type=int, nargs="?", default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout, alternated with this")
    args = parser.parse_args()
    n, out, repeats = args.n, args.out.resolve(), args.repeats
    baseline = args.baseline.resolve() if args.baseline else None
    if not (out / "data" / "prepared" / "panel.parquet").is_file():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import bench_scale as bs

        from pipeline.config import validate
        from pipeline.config.compose import compose_dict
        from pipeline.stages.prepare import prepare

        prepare(validate(compose_dict(bs.rw_overrides(n, out))), Path.cwd())
    trees = {"this": ROOT, **({"base": baseline} if baseline else {})}
    cache = os.environ.get("QPIPE_PLAN_CACHE")
    plans = {name: Path(cache) if cache else out / f"plans-{name}" for name in trees}
    for name, tree in trees.items():
        child(tree, out, n, plans[name])  # builds and keeps the plan, as probe does
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            rows[name].append(child(tree, out, n, plans[name]))
            print(name, json.dumps(rows[name][-1]), flush=True)
    for name, runs in rows.items():
        medians = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        print(f"{name} medians of {repeats}: {json.dumps(medians)}")


if __name__ == "__main__":
    main()
