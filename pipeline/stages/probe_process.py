"""The probe's child process, seen from the driver: `ProbeChild` starts it (`python -P -m
pipeline.runtime.execute.probe_child`, in a worker's environment) and stops it, and a child
can start early, before prepare (`start_early`), for `run_probe` to take up (`take_early`).
What the child measures and how the probe plans from it: pipeline.stages.probe.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.io import write_json
from pipeline.runtime.execute.probe_child import WORKER_IMPORTS
from pipeline.runtime.execute.task_imports import imports_torch, task_imports
from pipeline.runtime.sizing.plan import worker_environment
from pipeline.runtime.sizing.probe_cache import cache_is_empty, has_entry, machine_identity

if TYPE_CHECKING:
    from pipeline.config import StudyConfig

PROBE_CHILD = "pipeline.runtime.execute.probe_child"


def baseline_inputs(imports: tuple[str, ...]) -> dict[str, Any]:
    """What the worker baseline (an idle worker-like process with `imports`, the probed models'
    task imports) depends on: the probe cache key."""
    return {"kind": "baseline", "imports": [*WORKER_IMPORTS, *imports], "machine": machine()}


def machine() -> dict[str, Any]:
    return machine_identity(worker_environment({}))


class ProbeChild:
    """The probe's one child process (`python -P -m pipeline.runtime.execute.probe_child`, in
    a worker's environment: one thread, glibc's malloc defaults), started once something is
    known to need measuring; it imports what a worker running the probed models imports
    (`imports`: their tasks' modules), then waits for its job list."""

    # jobs measured at once; None: the child decides from the cores other processes leave
    # idle (probe_child.jobs_at_once). Fixed only by benchmarks and tests comparing the two.
    parallel: int | None = None

    def __init__(self, imports: tuple[str, ...] | None = ()) -> None:
        self.imports = imports  # None: given later (`give_imports`), the child waits for them
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._started_with = 0  # the environment and sys.path it was started with

    @property
    def tmp(self) -> Path:
        assert self._tmp is not None, "start() first"
        return Path(self._tmp.name)

    def start(self) -> None:
        if self.proc is not None:
            return
        from pipeline.runtime.sizing.resources import usable_cores

        # like a worker (pipeline.runtime.execute.dask.settings.worker_environ)
        env = worker_environment(os.environ)
        # the child imports what this process imports (this copy of the package, a user
        # model's module): its sys.path is ours, and -P keeps the working directory off it
        # unless it is on ours (under the qpipe command it is not, so a stray pipeline.py
        # there cannot run)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p == "" else p for p in sys.path)
        self._tmp = tempfile.TemporaryDirectory(prefix="qpipe-probe-")
        cmd = [sys.executable, "-P", "-m", PROBE_CHILD, "--jobs", str(self.tmp / "jobs.json")]
        cmd += ["--parallel", str(self.parallel or "auto"), "--cores", str(usable_cores())]
        cmd += ["--out", str(self.tmp / "result.json")]
        cmd += ["--parent", str(os.getpid()), "--tmp", str(self.tmp)]
        imports = (
            f"@{self.tmp / 'imports.json'}" if self.imports is None else ",".join(self.imports)
        )
        self.proc = subprocess.Popen([*cmd, "--imports", imports], env=env)
        self._started_with = _environment()

    def takes_imports(self) -> bool:
        """Whether this child, started without imports, can still be given them: it sees the
        sys.path and environment it was started with, which a user model's `python_path`
        (put on sys.path while the config is validated) would change."""
        return self.imports is None and self._started_with == _environment()

    def give_imports(self, imports: tuple[str, ...]) -> None:
        """The models' task imports, for a child started without them (`takes_imports`)."""
        assert self.imports is None, "the child has its imports"
        self.imports = imports
        if self._tmp is not None:
            write_json(self.tmp / "imports.json", list(imports))

    def close(self) -> None:
        """Stop the child if it still runs (interrupted, past its timeout); remove its files."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            os.wait4(self.proc.pid, 0)
            self.proc.returncode = -9
        if self._tmp is not None:
            self._tmp.cleanup()
        self.proc, self._tmp = None, None

    def __enter__(self) -> ProbeChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# the probe's child started before prepare (`start_early`), waiting for run_probe
_early: ProbeChild | None = None


def start_early(config: StudyConfig, models: list[str]) -> None:
    """Start the probe's child now, before prepare (`python -m pipeline run` with new data),
    when it will surely be needed: the worker baseline is measured once per machine and import
    list, and is not in this machine's probe cache (or `runtime.reprobe`). Its imports (numpy
    and distributed: 0.35 s) then overlap with prepare and the plans instead of following
    them. What it measures is unchanged: it waits for its jobs.

    Only for models whose tasks import no torch (`imports_torch`): the child counts the CPU
    other processes use from its start to choose how many jobs to run at once, and the
    driver's own early child importing torch during prepare (1-2 CPU-s) would read as load."""
    global _early
    imports = task_imports(config, models)
    if imports_torch(imports) or (
        not config.runtime.reprobe and has_entry(baseline_inputs(imports))
    ):  # whether a model needs measuring is known only from its plan, after prepare
        discard_early()  # a speculative child that guessed wrong
        return
    if _early is not None and _early.takes_imports():
        _early.give_imports(imports)
        return
    discard_early()
    _early = ProbeChild(imports)
    _early.start()


def start_speculative() -> None:
    """Start the probe's child before the config is composed (`python -m pipeline run`) when
    this machine's probe cache is empty (the first study here, or a cleared cache: the worker
    baseline is then surely measured), its imports not yet known: numpy and distributed
    (0.35 s) load on the second core while this process composes and validates the config
    (which leaves that core idle). `start_early` or `take_early` give it the models' imports;
    it is stopped (`discard_early`) when the study imports torch, finds a baseline, or ends
    before its probe. What it measures is unchanged."""
    global _early
    if _early is not None or not cache_is_empty():
        return
    _early = ProbeChild(None)
    _early.start()


def _environment() -> int:
    return hash((tuple(sorted(os.environ.items())), tuple(sys.path)))


def discard_early() -> None:
    """Stop an early child run_probe did not take (the run ended before its probe)."""
    global _early
    child, _early = _early, None
    if child is not None:
        child.close()


def take_early(imports: tuple[str, ...]) -> ProbeChild:
    """The early child when it imports `imports`, else a new (not yet started) one."""
    global _early
    child, _early = _early, None
    if child is not None and child.takes_imports() and not imports_torch(imports):
        child.give_imports(imports)  # started speculatively, and prepare was skipped
    if child is not None and child.imports == imports:
        return child
    if child is not None:
        child.close()
    return ProbeChild(imports)
