"""Failures a long study meets, by hand at scale (the suite's tests/test_chaos_*.py run the
same at a few thousand fits): the rw study of N countries (N x 912 fits, bench_scale's).

`--signals N CASE...`: CASE is STAGE:SIGNAL:MOST (e.g. train:INT:40): the run, on its own
LocalCluster (runtime.in_process_below_s=0), gets SIGNAL a seeded random 0..MOST seconds
after STAGE began; printed: the stage it met, exit code, seconds to the driver's exit and to
its last process's, orphans, the resume's wall and whether its files equal the clean run's.
`--cluster N SCENARIO...` on an existing cluster (bench_scaleout's: `dask scheduler` and 2
`dask worker`s, each in its own mount namespace): `worker-kill` (SIGKILL one worker once a
third of the shards are in), `scheduler-restart` (SIGKILL the scheduler then, start it again
on its port), `late-worker` (start with 1 worker, a second joins then). Printed: exit code,
wall, the error lines, then a resume on a fresh cluster (when the run failed) and whether
its files equal the clean run's.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from bench_scale import ROOT, rw_command
from bench_scaleout import DASK, bench_environ, free_port, start_cluster, stop
from scale_resume import stored_fits

sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: one definition of each check
from chaos_study import COMPARED, differing, error_lines, interrupt


def clean(n: int, base: Path) -> Path:
    out = base / f"clean{n}"
    if not (out / "metrics.json").exists():
        subprocess.run(rw_command(n, out), cwd=ROOT, check=True, capture_output=True)
    return out


def signals(n: int, cases: list[str], base: Path, seed: int) -> None:
    reference, rng = clean(n, base), random.Random(seed)
    for case in cases:
        stage, name, most = case.split(":")
        out = base / f"sig{n}-{stage}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        delay = rng.uniform(0, float(most))
        cmd = rw_command(n, out, "runtime.in_process_below_s=0")
        got = interrupt(cmd, stage, delay, getattr(signal, f"SIG{name}"))
        t0 = time.perf_counter()
        done = subprocess.run(rw_command(n, out), cwd=ROOT, capture_output=True, text=True)
        print(
            f"{case}: at {got.stage} +{delay:.2f} s, exit {got.exit_code}, driver gone "
            f"{got.stop_s:.2f} s, all gone {got.all_gone_s:.2f} s, orphans {got.orphans}; resume "
            f"exit {done.returncode} in {time.perf_counter() - t0:.1f} s, differing "
            f"{differing(out, reference)} of {list(COMPARED)}",
            flush=True,
        )


def on_cluster(n: int, scenario: str, base: Path) -> None:
    reference = clean(n, base)
    out = base / f"cluster{n}-{scenario}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = bench_environ(base, "off")
    scheduler, workers = start_cluster(
        address, port, 1 if scenario == "late-worker" else 2, out, env
    )
    cmd = rw_command(n, out, f"runtime.scheduler_address={address}", "runtime.max_workers=2")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        seen: dict[str, int] = {}
        while proc.poll() is None and stored_fits(out / "models/rw/shards", seen) < n * 912 / 3:
            time.sleep(0.05)
        hit = time.perf_counter() - t0
        if scenario == "worker-kill":
            # the node lost: its nanny and the worker process under it
            for p in [*psutil.Process(workers[0].pid).children(recursive=True), workers[0]]:
                p.kill()
        elif scenario == "scheduler-restart":
            scheduler.kill()
            scheduler.wait()
            scheduler = subprocess.Popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port",
                 str(port), "--no-dashboard"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        elif scenario == "late-worker":
            workers.append(start_more_worker(address, out, env))
        _, err = proc.communicate(timeout=1800)
        wall = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        stop([*workers, scheduler])
    print(
        f"{scenario}: disrupted at {hit:.1f} s, exit {proc.returncode} after {wall:.1f} s, "
        f"errors {error_lines(err)}",
        flush=True,
    )
    if proc.returncode != 0:  # resumed on the driver alone (a fresh cluster gives the same)
        t0 = time.perf_counter()
        done = subprocess.run(rw_command(n, out), cwd=ROOT, capture_output=True, text=True)
        print(f"  resume exit {done.returncode} in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"  differing {differing(out, reference)} of {list(COMPARED)}", flush=True)


def start_more_worker(address: str, out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A `dask worker` joining late, in a mount namespace of its own (bench_scaleout's)."""
    import shlex

    target = shlex.quote(str(out.resolve()))
    worker = (
        f"mount -t tmpfs tmpfs {target} && exec {shlex.quote(DASK)} worker {address} "
        "--nthreads 1 --memory-limit 2GiB --no-dashboard --host 127.0.0.1"
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", worker],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", nargs="+", metavar=("N", "CASE"))
    parser.add_argument("--cluster", nargs="+", metavar=("N", "SCENARIO"))
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--base", type=Path, default=Path("/tmp/scale_chaos"))
    args = parser.parse_args()
    args.base.mkdir(parents=True, exist_ok=True)
    if args.signals:
        signals(int(args.signals[0]), args.signals[1:], args.base, args.seed)
    for scenario in (args.cluster or [None, None])[1:]:
        on_cluster(int(args.cluster[0]), scenario, args.base)


if __name__ == "__main__":
    main()
