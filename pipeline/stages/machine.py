"""`machine`: describe the machine the pipeline runs on, cheaply, as `machine.json`.

DVC cannot see the machine, and the probe (seconds of measurements in child processes) is too
slow to run on every `dvc repro`. So this tiny stage runs on every repro (`always_changed`) and
writes the facts that decide the probe's plan: usable cores, total memory, GPUs, platform and
the versions of the packages a worker imports. The probe depends on this file: on the same
machine the bytes are identical and DVC skips the probe (and everything after it); on another
machine (a clone, CI, a bigger box) the probe runs again, so a committed plan is never reused
blindly. Free memory is deliberately left out: it moves all the time, and the probe's rounded
plan absorbs small changes (`dvc repro -f -s probe` re-measures on demand).

Run as `python -m pipeline.stages.machine [PATH]`; stays light (no numpy/pandas import) and
rewrites the file only when the facts changed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.runtime.resources import total_memory_bytes, usable_cores

MACHINE_FILE = Path("machine.json")
# packages whose versions change a worker's baseline memory or speed
PACKAGES = ("numpy", "scipy", "torch", "dask", "distributed", "pandas", "pyarrow")
_GIB = 2**30


def machine_facts() -> dict[str, Any]:
    """The facts that decide the probe's plan (deterministic on one machine)."""
    return {
        "cores": usable_cores(),
        "memory_gib": memory_gib(),
        "gpus": gpus(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "packages": {name: _version(name) for name in PACKAGES},
    }


def memory_gib() -> int:
    """Total memory in whole GiB, capped by a cgroup memory limit (rounded down)."""
    return int(total_memory_bytes() // _GIB)


def gpus() -> list[str]:
    """NVIDIA GPU models visible to the driver (no torch import: this stage must stay fast)."""
    root = Path("/proc/driver/nvidia/gpus")
    names = []
    if root.is_dir():
        for info in sorted(root.glob("*/information")):
            for line in _read(str(info)).splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # "" or "-1" hides every GPU from torch
        names = names[: len([d for d in visible.split(",") if d.strip() not in ("", "-1")])]
    return names


def write_machine(path: Path = MACHINE_FILE) -> bool:
    """Write the facts to `path` unless it already holds exactly them; True when written."""
    text = json.dumps(machine_facts(), indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    from pipeline.io import write_text  # imports pandas: only paid when the machine changed

    write_text(path, text)
    return True


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else MACHINE_FILE
    changed = write_machine(target)
    print(f"{target}: {'updated' if changed else 'unchanged'}")
