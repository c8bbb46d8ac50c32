"""Start-up costs (issue 18 item 6: "a tiny study's run starts in about a second").

The small ar_qr study of bench_small_study.py (3 countries of the shipped real data, the seed's
72 origins and 4 horizons, ar_qr alone: 864 fits), measured in fresh processes:

- no-op `run`: `python -m pipeline run ...` once more in a finished run's output dir (every
  stage skipped): CPU seconds (user + sys, os.wait4) and wall of the whole command;
- each stage process's start: `python -m pipeline stage NAME --params params.yaml` (as
  `dvc repro` runs them), the process's CPU seconds and wall from its launch to the moment the
  stage's function is called (interpreter, imports, reading and validating params.yaml, the
  lock and manifest), then the whole process's CPU and wall; prepare, probe, train (from an
  empty fit cache and progress store) and assemble;
- with `--cluster`: the train stage on an existing Dask cluster (one `dask scheduler` and one
  `dask worker` on 127.0.0.1, started here; `runtime.scheduler_address` set), the same
  figures, plus the CPU seconds until its client has connected and until its first task was
  submitted (the first `Client.submit` of something other than the cluster's no-op `int`
  placeholders): the train stage's fixed start as a cluster's workers see it.
- with `--cluster --rw N`: the same cluster train of bench_scale's rw study of N countries
  (N x 912 fits; N=1100 is issue 18's 1,003,200), prepared and probed once per checkout,
  trained `--repeats` times from an empty fit cache and progress store; only this row (the
  small study's are not run).

`--baseline CHECKOUT` runs the same commands with another checkout's code (e.g. `git archive`
of main), alternating with this one in each repeat. Medians of `--repeats`; the 1-min load
average before and after. CPU seconds are the figures to compare on a shared machine.

Usage: python benchmarks/bench_startup.py [--repeats 5] [--baseline /tmp/base] [--cluster]
       [--rw N] [--out /tmp/bench_startup] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_scale import rw_overrides
from study_overrides import AR_QR_ONLY, QUIET

ROOT = Path(__file__).resolve().parents[1]
COUNTRIES = ["DE", "FR", "IT"]
DASK = str(Path(sys.executable).with_name("dask"))
WORKER_ARGS = ["--no-dashboard", "--host", "127.0.0.1"]

# the stage's function, where its start ends: (module, function) per stage
STAGE_FUNCTIONS = {
    "prepare": ("pipeline.stages.prepare", "prepare"),
    "probe": ("pipeline.stages.probe", "run_probe"),
    "train": ("pipeline.stages.train", "run_train"),
    "assemble": ("pipeline.stages.study", "assemble_study"),
}

# Runs `qpipe ARGV` after wrapping MODULE.FUNC as it is first imported (an import hook, so the
# import itself is timed as the command pays it): the process's CPU seconds and the time when
# the function is called go to OUT. With a cluster, also when its client connected and when
# its first task (not one of the cluster's `int` placeholders) was submitted.
HOOK = r"""
import importlib.machinery, json, sys, time

module_name, func_name, out = sys.argv[1:4]
marks = {}


def mark(name):
    if name not in marks:
        marks[name] = {"cpu_s": time.process_time(), "time": time.time()}
        with open(out, "w") as handle:
            json.dump(marks, handle)


def wrap(module, name, label):
    # mark `label` when module.name is called; for a class, when its __init__ returns
    owner = getattr(module, name)
    if isinstance(owner, type):  # the class itself stays (isinstance, subclasses)
        inner = owner.__init__

        def init(self, *args, **kwargs):
            inner(self, *args, **kwargs)
            mark(label)

        owner.__init__ = init
        return

    def timed(*args, **kwargs):
        mark(label)
        return owner(*args, **kwargs)

    setattr(module, name, timed)


class Hook:
    def __init__(self, targets):
        self.targets = targets  # module -> [(name, label)]

    def find_spec(self, name, path, target=None):
        if name not in self.targets:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for target in self.targets[name]:
                if callable(target):
                    target(module)
                else:
                    wrap(module, *target)

        spec.loader.exec_module = exec_module
        return spec


def mark_first_task(module):
    submit = module.Client.submit

    def first(self, fn, *args, **kwargs):
        if fn is not int:
            mark("first_task")
        return submit(self, fn, *args, **kwargs)

    module.Client.submit = first


sys.meta_path.insert(0, Hook({
    module_name: [(func_name, "start")],
    "distributed.client": [("Client", "client"), mark_first_task],
}))
from pipeline.cli import main

sys.exit(main(sys.argv[4:]))
"""


def overrides(out: Path, extra: list[str] = ()) -> list[str]:
    return [
        *AR_QR_ONLY,
        f"data.countries=[{','.join(COUNTRIES)}]",
        f"runtime.output_dir={out}",
        *QUIET,
        *extra,
    ]


def timed(cmd: list[str], checkout: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(launch time, wall s, CPU s of the process and its reaped children) of one command."""
    launched = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=checkout,
        env={**env, "PYTHONPATH": str(checkout)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr.decode()[-3000:]}")
    return launched, wall, usage.ru_utime + usage.ru_stime


def stage(
    name: str,
    params: Path,
    checkout: Path,
    env: dict[str, str],
    marks: Path,
    model: str = "ar_qr",
) -> dict[str, float]:
    """One `stage NAME` process: CPU and wall to the stage's call, and of the whole process."""
    module, func = STAGE_FUNCTIONS[name]
    args = ["stage", name, "--params", str(params)]
    if name == "train":
        args += ["--model", model]
    marks.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", HOOK, module, func, str(marks), *args]
    launched, wall, cpu = timed(cmd, checkout, env)
    seen = json.loads(marks.read_text())
    row = {
        "start_cpu_s": seen["start"]["cpu_s"],
        "start_wall_s": seen["start"]["time"] - launched,
        "cpu_s": cpu,
        "wall_s": wall,
    }
    if "client" in seen:
        row["client_cpu_s"] = seen["client"]["cpu_s"]
    if "first_task" in seen:
        row["first_task_cpu_s"] = seen["first_task"]["cpu_s"]
        row["first_task_wall_s"] = seen["first_task"]["time"] - launched
    return row


def noop_run(out: Path, checkout: Path, env: dict[str, str]) -> dict[str, float]:
    """A `run` in a finished run's dir: every stage skipped."""
    cmd = [sys.executable, "-m", "pipeline", "run", *overrides(out)]
    _, wall, cpu = timed(cmd, checkout, env)
    return {"cpu_s": cpu, "wall_s": wall}


def compose(
    params: Path, out: Path, extra: list[str], env: dict[str, str], rw: int | None = None
) -> None:
    study = overrides(out, extra) if rw is None else [*rw_overrides(rw, out), *extra]
    cmd = [sys.executable, "-m", "pipeline", "compose", *study]
    subprocess.run(
        [*cmd, "--output", str(params)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
    )


def one_tree(
    tag: str, checkout: Path, base: Path, env: dict[str, str], cluster: str | None
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    runs = base / f"{tag}-run"
    if not runs.exists():  # the first repeat makes the finished run the no-op reruns reuse
        cmd = [sys.executable, "-m", "pipeline", "run", *overrides(runs)]
        timed(cmd, checkout, env)
    row["noop_run"] = noop_run(runs, checkout, env)
    staged = base / f"{tag}-staged"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    params = staged / "params.yaml"
    compose(params, staged, [], env)
    marks = base / f"{tag}-marks.json"
    for name in STAGE_FUNCTIONS:
        row[name] = stage(name, params, checkout, env, marks)
    if cluster is not None:
        params_cl = staged / "params-cluster.yaml"
        compose(params_cl, staged, [f"runtime.scheduler_address={cluster}"], env)
        for sub in ("models", "progress", "train"):  # train from an empty cache again
            shutil.rmtree(staged / sub, ignore_errors=True)
        row["train on a cluster"] = stage("train", params_cl, checkout, env, marks)
    return row


def rw_train_tree(
    tag: str, checkout: Path, base: Path, env: dict[str, str], cluster: str, n: int
) -> dict[str, Any]:
    """The rw study of N countries trained on the cluster from an empty cache (prepared and
    probed by this checkout on its first repeat)."""
    staged = base / f"{tag}-rw{n}"
    params = staged / "params.yaml"
    if not params.exists():
        staged.mkdir(parents=True)
        compose(params, staged, [f"runtime.scheduler_address={cluster}"], env, rw=n)
        for name in ("prepare", "probe"):
            cmd = [sys.executable, "-m", "pipeline", "stage", name, "--params", str(params)]
            timed(cmd, checkout, env)
    for sub in ("models", "progress", "train"):
        shutil.rmtree(staged / sub, ignore_errors=True)
    marks = base / f"{tag}-marks.json"
    return {f"rw {n} train on a cluster": stage("train", params, checkout, env, marks, "rw")}


def start_cluster(base: Path, env: dict[str, str]) -> tuple[str, list[subprocess.Popen[bytes]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": base}
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            **quiet,
        ),
        subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "1", "--memory-limit", "2GiB", *WORKER_ARGS],
            **quiet,
        ),
    ]
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(1, timeout=120)
    return address, procs


def main(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.out)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    env = {**os.environ, "QPIPE_PROBE_CACHE": str(base / "probe-cache")}
    trees = {"this": ROOT}
    if args.baseline:
        trees = {"baseline": Path(args.baseline).resolve(), **trees}
    cluster, procs = start_cluster(base, env) if args.cluster else (None, [])
    loads = [os.getloadavg()[0]]
    rows = []
    try:
        for _ in range(args.repeats):
            row = {
                tag: one_tree(tag, checkout, base, env, cluster)
                if args.rw is None
                else rw_train_tree(tag, checkout, base, env, cluster, args.rw)
                for tag, checkout in trees.items()
            }
            loads.append(os.getloadavg()[0])
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    kinds = list(rows[0]["this"])
    median = {
        tag: {
            kind: {
                key: statistics.median(row[tag][kind][key] for row in rows)
                for key in rows[0][tag][kind]
            }
            for kind in kinds
        }
        for tag in trees
    }
    result = {"repeats": rows, "median": median, "load_average": [min(loads), max(loads)]}
    print(report(result, list(trees)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def report(result: dict[str, Any], trees: list[str]) -> str:
    lo, hi = result["load_average"]
    lines = [
        f"medians of {len(result['repeats'])} repeats, 1-min load average {lo:.1f}-{hi:.1f}",
        "",
        "| command | tree | start CPU s | start wall s | client CPU s | first task CPU s "
        "| CPU s | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in result["median"][trees[0]]:
        for tag in trees:
            m = result["median"][tag][kind]
            cells = [
                f"{m[key]:.2f}" if key in m else "-"
                for key in ("start_cpu_s", "start_wall_s", "client_cpu_s", "first_task_cpu_s")
            ]
            lines.append(
                f"| {kind} | {tag} | {' | '.join(cells)} | {m['cpu_s']:.2f} | {m['wall_s']:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":  # guard required: the cluster's client
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="another checkout (e.g. git archive)")
    parser.add_argument("--cluster", action="store_true", help="also train on an existing cluster")
    parser.add_argument("--rw", type=int, default=None, metavar="N", help="with --cluster")
    parser.add_argument("--out", default="/tmp/bench_startup")
    parser.add_argument("--json", default=None)
    parsed = parser.parse_args()
    if parsed.rw is not None and not parsed.cluster:
        parser.error("--rw N measures the train stage on a cluster: add --cluster")
    main(parsed)
