"""Planning follows the container: cgroup CPU quota and memory limit (v2 and v1 files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import SMALL_STUDY, make_config

import pipeline.runtime.sizing.resources as resources
from pipeline.runtime.sizing.plan import allowed_cores, ram_budget_mb


@pytest.fixture
def cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("_CPU_MAX", "_MEM_MAX", "_MEM_CURRENT"):
        monkeypatch.setattr(resources, name, str(tmp_path / name))
    monkeypatch.setattr(resources, "_CPU_V1", (str(tmp_path / "q"), str(tmp_path / "p")))
    monkeypatch.setattr(resources, "_MEM_V1", (str(tmp_path / "l"), str(tmp_path / "u")))
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(8)))
    return tmp_path


def test_v2_quota_and_memory_limit_bound_the_plan(cgroup: Path) -> None:
    (cgroup / "_CPU_MAX").write_text("150000 100000\n")  # 1.5 CPUs -> 2 cores
    (cgroup / "_MEM_MAX").write_text(f"{3 * 2**30}\n")
    (cgroup / "_MEM_CURRENT").write_text(f"{2**30}\n")
    assert resources.usable_cores() == 2
    assert resources.available_memory_bytes() == min(2 * 2**30, psutil.virtual_memory().available)
    config = make_config(
        {**SMALL_STUDY, "runtime": {**SMALL_STUDY["runtime"], "max_workers": None}}
    )
    assert allowed_cores(config) == 2
    assert ram_budget_mb(config) <= 2 * 1024 * config.runtime.safety_ram_fraction + 1e-6
    assert resources.total_memory_bytes() <= 3 * 2**30


def test_v1_files_and_no_limit(cgroup: Path) -> None:
    assert resources.cpu_quota() is None and resources.cgroup_memory() is None
    assert resources.usable_cores() == 8
    (cgroup / "q").write_text("300000\n")
    (cgroup / "p").write_text("100000\n")
    (cgroup / "l").write_text(f"{2**30}\n")
    (cgroup / "u").write_text(f"{2**29}\n")
    assert resources.usable_cores() == 3 and resources.cgroup_memory() == (2**30, 2**29)
    (cgroup / "q").write_text("-1\n")  # v1's "no quota"
    (cgroup / "l").write_text(f"{1 << 62}\n")  # v1's "no limit"
    assert resources.cpu_quota() is None and resources.cgroup_memory() is None


def test_the_plan_follows_the_live_machine_not_the_probe_file(cgroup: Path, tmp_path: Path) -> None:
    """probe.json says what a worker needs; the worker count comes from where train runs."""
    from pipeline.io import write_json
    from pipeline.runtime.sizing.plan import load_plan

    probe = tmp_path / "probe.json"
    write_json(
        probe,
        {"threads_per_worker": 1, "memory_limit_mb": 1024, "models": {"ar_qr": {"n_fits": 64}}},
    )
    write_json(tmp_path / "probe_measurements.json", {"baseline_mb": 300.0, "models": {"ar_qr": {"seconds_per_fit": 0.01, "peak_mb": 400.0}}})  # fmt: skip
    text = probe.read_bytes()
    config = make_config(
        {
            **SMALL_STUDY,
            "runtime": {**SMALL_STUDY["runtime"], "max_workers": None, "max_ram_gb": 64},
        }
    )
    (cgroup / "_CPU_MAX").write_text("800000 100000\n")  # an 8-core machine
    assert load_plan(probe, config).n_workers == 8
    (cgroup / "_CPU_MAX").write_text("300000 100000\n")  # the same study on 3 cores
    plan = load_plan(probe, config)
    assert plan.n_workers == 3 and plan.memory_limit_mb == 1024
    assert plan.models["ar_qr"].seconds_per_fit == 0.01 and plan.models["ar_qr"].fits_per_task >= 1
    # a tighter RAM limit: fewer workers of the same size
    tight = make_config(
        {**SMALL_STUDY, "runtime": {**SMALL_STUDY["runtime"], "max_workers": None, "max_ram_gb": 2}}
    )
    assert load_plan(probe, tight).n_workers == 2
    assert probe.read_bytes() == text  # nothing written: no stage output changed


# a process that peaks at 600 MiB, then spawns (fork + exec) a small one that reports its peak
BIG_PARENT = """
import json, resource, subprocess, sys
big = bytearray(600 * 2**20)
big[:: 4096] = b"x" * len(big[:: 4096])  # touch every page
del big
child = (
    "import json, resource; from pipeline.runtime.sizing.resources import own_peak_mb; "
    "print(json.dumps([own_peak_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))"
)
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)
"""


def test_a_spawned_process_reports_its_own_peak_not_its_parents() -> None:
    """Workers and the probe's child report own_peak_mb: Linux carries ru_maxrss across exec,
    so a worker spawned by a 600 MiB process read 600 MiB as its own peak (a full test suite's
    runner made a real worker "peak" above the probe's memory limit)."""
    done = subprocess.run([sys.executable, "-c", BIG_PARENT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    own, inherited = json.loads(done.stdout.strip().splitlines()[-1])
    assert inherited >= 600  # the kernel's carried-over figure: why ru_maxrss is not used
    assert own < 300, own
