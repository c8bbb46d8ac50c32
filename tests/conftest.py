"""Shared fixtures.

- `study_dict(tmp_path)`: a small synthetic study as a plain config dict (4 countries, window 24,
  origins 2018-01..2018-12, horizons 1 and 3, quantiles 0.1/0.5/0.9, ar_qr p=3 and the
  benchmarks rw and climatology, no progress bar); tests edit it and call `make_config`.
- `tiny_study(*changes)`: Hydra overrides of a seconds-long CLI study (TINY_STUDY: 3 countries,
  one horizon, 6 origins, ar_qr and lqr only, 50 MCS replications), `changes` replacing or
  adding overrides.
- `make_config(d)`: pipeline.config.validate of `d` over conf/'s defaults (their one source).
- `prepared_study(tmp_path)`: that study's config with `prepare` already run (panel on disk).
- `REAL_DATA`: the real Eurostat extract shipped in data/eurostat/ (conf/data/eurostat.yaml).
- probe cache: tests share one session-wide probe cache (QPIPE_PROBE_CACHE, autouse), so a
  study measured once is not probed again by the next test with the same settings, and no test
  writes to the user's ~/.cache; `probe_cache` gives a test its own empty one instead.
- `oracle_study`: one seeded small study run once per session through the command line (rw,
  climatology, their combo and the tracker's `_cal` variants, horizons 1 and 3, origins
  2019-07 .. 2021-06); the oracle tests read its outputs and never write into it.
- processes: after a failed test, whatever processes it started and did not stop are killed by
  their PID (autouse); a passing test stops its own.
- temp dir: TMPDIR (and tempfile's) is the session's `basetemp/tmpN` (autouse), so that nothing a
  test or a process it starts writes to the system temp dir is left in /tmp.
- `fake_adapters` (autouse in tests that request it): puts tests/fake_models.py on
  PIPELINE_EXTRA_ADAPTERS so the driver and every worker process can load the test-only models.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.config import StudyConfig, validate
from pipeline.config.defaults import with_defaults
from pipeline.models.plugins import registry

FAKE_MODELS = str(Path(__file__).with_name("fake_models.py"))
ROOT = Path(__file__).resolve().parents[1]
# The real Eurostat extract shipped in the repo, where conf/data/eurostat.yaml points (one source).
REAL_DATA = ROOT / yaml.safe_load((ROOT / "pipeline/conf/data/eurostat.yaml").read_text())["path"]

SMALL_STUDY: dict[str, Any] = {
    "name": "small",
    "seed": 0,
    "data": {
        "source": "synthetic",
        "synthetic": {"n_countries": 4, "start": "2012-01-01", "end": "2019-12-01", "seed": 0},
        "lags": [1, 2],
        "horizons": [1, 3],
        "quantiles": [0.1, 0.5, 0.9],
    },
    "rolling_window": {"size": 24, "step": 1, "start_date": "2018-01-01", "end_date": "2018-12-01"},
    "runtime": {"progress_bar": False, "task_seconds": 0.5, "retries": 1, "max_workers": 2},
    # ar_qr and the benchmarks (a new built-in model stays out: tests/test_one_source.py)
    "models": {**registry.only_entries("ar_qr", "rw", "climatology"), "ar_qr": {"p": 3}},
}


# A study that runs end to end through the CLI in seconds: 3 countries, one horizon, 6 origins,
# small models (ar_qr, lqr); ensemble_nn, the benchmarks and the combo off and 50 MCS
# replications (the probe measures every enabled model in a process of its own, and arch's
# bootstrap is assemble's costliest step) unless a test turns them back on.
TINY_STUDY: tuple[str, ...] = (
    "data.synthetic.n_countries=3",
    "data.horizons=[1]",
    "rolling_window.size=36",
    "rolling_window.start_date=2022-07-01",
    "rolling_window.end_date=2022-12-01",
    "models.ar_qr.p=3",
    "models.lqr.rff_features=16",
    *registry.only("ar_qr", "lqr"),  # a new built-in model stays out (tests/test_one_source.py)
    "evaluation.combo.enabled=false",
    "evaluation.mcs_reps=50",
    "runtime.task_seconds=0.2",
    "runtime.max_workers=1",
    "runtime.dashboard_port=0",
    "runtime.progress_bar=false",
)


# Without a dashboard Dask's scheduler still serves its HTTP routes (health, metrics) on the
# dashboard's default port 8787, on every interface for `dask scheduler --no-dashboard`, and
# warns "Port 8787 is already in use" when another process (another test's cluster) holds it.
# A test's scheduler takes a free port of 127.0.0.1 instead: LocalCluster(dashboard_address=
# None, scheduler_kwargs=NO_PORT_8787), `dask scheduler ... *NO_DASHBOARD`.
NO_PORT_8787 = {"dashboard_address": "127.0.0.1:0"}
NO_DASHBOARD = ("--no-dashboard", "--dashboard-address", "127.0.0.1:0")


def tiny_study(*changes: str) -> list[str]:
    """TINY_STUDY's overrides with `changes`: one for a key already there replaces it (e.g.
    `models.ensemble_nn.enabled=true`, or a sweep `data.horizons=[1],[1,3]`), others are
    appended in order."""
    out = list(TINY_STUDY)
    for change in changes:
        key = change.split("=", 1)[0]
        at = [i for i, o in enumerate(out) if o.split("=", 1)[0] == key]
        if at:
            out[at[0]] = change
        else:
            out.append(change)
    return out


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def stop_processes(procs: list[subprocess.Popen[Any]]) -> None:
    """Stop processes a test started (a scheduler, its workers) by their PID: SIGTERM, then
    SIGKILL after 20 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_config(d: dict[str, Any]) -> StudyConfig:
    return validate(with_defaults(d))


def prepared_rw_study(tmp_path: Path) -> StudyConfig:
    """The small study with only rw enabled, its tasks run in the driver (no cluster: the test
    takes seconds), prepared into tmp_path/out."""
    from pipeline.stages.prepare import prepare

    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update({"output_dir": str(tmp_path / "out"), "in_process_below_s": 60.0})
    d["models"] = registry.only_entries("rw")
    config = make_config(d)
    prepare(config, ROOT)
    return config


def write_format_1_shard(shards: Path, entries: dict[str, dict[str, Any]], damaged: int) -> None:
    """A fit-cache shard `old` as format 1 wrote it (a sha256 per entry; pred and alpha
    stacked, state_c each entry's own), the checksum of entry `damaged` not matching."""
    from pipeline.runtime.store.shard_format import entry_checksum

    shards.mkdir(parents=True, exist_ok=True)
    np.savez(
        shards / "old.npz",
        pred=np.stack([e["pred"] for e in entries.values()]),
        alpha=np.stack([e["alpha"] for e in entries.values()]),
        **{f"{i}/state_c": e["state_c"] for i, e in enumerate(entries.values())},
    )
    index = {
        "entries": [
            {"key": k, "own": ["state_c"], "sha256": entry_checksum(e)} for k, e in entries.items()
        ],
        "format": 1,
        "stacked": ["alpha", "pred"],
    }
    index["entries"][damaged]["sha256"] = "0" * 64
    (shards / "old.json").write_text(json.dumps(index, sort_keys=True))


@pytest.fixture
def study_dict(tmp_path: Path) -> dict[str, Any]:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(tmp_path / "out")
    return d


@pytest.fixture
def prepared_study(study_dict: dict[str, Any]) -> StudyConfig:
    from pipeline.stages.prepare import prepare

    config = make_config(study_dict)
    prepare(config, ROOT)
    return config


@pytest.fixture
def fake_adapters(monkeypatch: pytest.MonkeyPatch) -> str:
    current = os.environ.get("PIPELINE_EXTRA_ADAPTERS", "")
    monkeypatch.setenv("PIPELINE_EXTRA_ADAPTERS", ",".join(filter(None, [current, FAKE_MODELS])))
    return FAKE_MODELS


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread, as the workers run it; it also makes CPU results reproducible to
    the bit. Modules that train take it with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch  # here, not at the top: most tests never import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:  # setup, call or teardown: the test did not get to stop what it started
        item.stash[_FAILED] = True
    return report


@pytest.fixture(autouse=True)
def _no_process_outlives_a_failed_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test stops the processes it starts (a driver, a scheduler, workers) by their PID; one
    that fails before it gets there would leave them running through the rest of the suite (a
    study and its cluster competing for the 2 cores, a port held). After a failed test, every
    descendant of this process started since the test began is SIGKILLed by its PID
    (multiprocessing's resource tracker aside: killed, it is relaunched with a warning)."""
    began = time.clock_gettime(time.CLOCK_BOOTTIME)  # a process's start is kept since boot
    yield
    if not request.node.stash.get(_FAILED, False):
        return  # (a passing test stopped its own: nothing to look for, no cost)
    import psutil

    left = []
    boot = psutil.boot_time()  # (create_time() is boot_time() plus the start since boot)
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.create_time() - boot >= began - 0.02 and not any(
                "resource_tracker" in part for part in child.cmdline()
            ):
                left.append(child)
    for child in left:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(left, timeout=10)


@pytest.fixture(scope="session", autouse=True)
def _temp_dir_in_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The system temp dir, for the tests and every process they start (TMPDIR), is a folder
    of the session's basetemp: what the product puts there (the traceback log of an exit-2
    error without an output dir, qpipe-error-*.log; Dask's worker scratch space) stays with
    the test's other files instead of piling up in /tmp, where a suite left about 70 logs."""
    folder = tmp_path_factory.mktemp("tmp")
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)  # (gettempdir() caches its answer)
    yield folder
    if before[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before[0]
    tempfile.tempdir = before[1]


@pytest.fixture(scope="session")
def _session_probe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe-cache-shared")


@pytest.fixture(autouse=True)
def _shared_probe_cache(_session_probe_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QPIPE_PROBE_CACHE", str(_session_probe_cache))
    return _session_probe_cache


@pytest.fixture
def probe_cache(
    _shared_probe_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """An empty probe cache of this test's own (for tests about the cache itself)."""
    path = tmp_path_factory.mktemp("probe-cache")
    monkeypatch.setenv("QPIPE_PROBE_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def oracle_study(tmp_path_factory: pytest.TempPathFactory, _session_probe_cache: Path) -> Path:
    """rw (the benchmark), climatology, their combo and the tracker's `_cal` variants of the
    three on the synthetic panel, horizons 1 and 3, origins 2019-07 .. 2021-06 (outcomes in and
    out of the COVID months), run once through `python -m pipeline run`'s entry point; tasks in
    the driver, no solver (its cost is the run's fixed costs, about 6 CPU-s). Read-only: the
    oracle tests (test_oracle_pooled.py, test_coverage_holm.py) share it, so a test that writes
    copies it first."""
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("oracle-study") / "out"
    overrides = tiny_study(
        *registry.only("rw", "climatology"),
        "evaluation.combo.enabled=true",
        "evaluation.combo.members=[rw,climatology]",
        "evaluation.benchmark=rw",
        "calibration=tracker",
        "data.horizons=[1,3]",
        "rolling_window.start_date=2019-07-01",
        "rolling_window.end_date=2021-06-01",
        "runtime.in_process_below_s=60",
        f"runtime.output_dir={out}",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QPIPE_PROBE_CACHE", str(_session_probe_cache))
        assert main(["run", *overrides]) == 0
    return out
