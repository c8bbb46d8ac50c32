"""A per-user cache of probe measurements, so a study does not re-measure what this machine
already measured for the same model settings and task shape (issue 13, item 5).

One JSON file per measurement under `cache_dir()`: `$QPIPE_PROBE_CACHE` when set (tests point
it at a temp dir), else `$XDG_CACHE_HOME/qpipe/probe`, else `~/.cache/qpipe/probe`. The file
name is the key, a stable hash of everything the measurement depends on (`model_inputs`,
`baseline_inputs`): the model, its adapter version and key parameters, the quantiles, the
probed task's shape, the code of `pipeline/models` and this machine's identity (hostname, CPU
model, library versions, thread settings). Files are written atomically by the driver
(pipeline.io) and carry a checksum; a damaged or foreign file is ignored with a warning and the
measurement is taken again (then overwritten), never an error. `runtime.reprobe=true` measures
anyway and replaces the entry.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import socket
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.io import read_json, stable_hash, write_json

log = logging.getLogger("pipeline.probe")

ENV_VAR = "QPIPE_PROBE_CACHE"
# 2: peaks from one child and its forks (VmHWM; os.wait4 growth): a spawned child's ru_maxrss
# started at the driver's peak, so entries of format 1 may hold the driver's RSS;
# 3: time per fit in CPU seconds (wall before: inflated many times on a loaded machine);
# 4: a job's peak without the whole group's windows (the child gets the compact payload a
# worker gets and builds only the measured fits' windows: x10 ar_qr 300 -> ~145 MiB)
FORMAT = 4
# libraries whose version changes what a task costs (solvers, arrays, the worker's imports)
VERSIONED = ("numpy", "scipy", "torch", "pandas", "pyarrow", "distributed")


def cache_dir() -> Path:
    """Where measurements are kept (see the module docstring)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qpipe" / "probe"


def machine_identity(thread_env: Mapping[str, str]) -> dict[str, Any]:
    """What makes a measurement on this machine valid only here."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "python": sys.version.split()[0],
        "versions": versions,
        "threads": dict(sorted(thread_env.items())),
    }


def code_fingerprint() -> str:
    """sha256 of the model code (pipeline/models): a changed solver is measured again."""
    root = Path(__file__).resolve().parents[2] / "models"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def entry_path(inputs: Mapping[str, Any]) -> Path:
    return cache_dir() / f"{stable_hash(dict(inputs), 40)}.json"


def lookup(inputs: Mapping[str, Any], required: tuple[str, ...]) -> dict[str, Any] | None:
    """This machine's earlier measurement for `inputs` (valid, with every `required` field),
    or None."""
    path = entry_path({"format": FORMAT, **inputs})
    found = load_entry(path, required)
    if found is not None:
        log.info("probe: reused measurement from %s", path)
    return found


def has_entry(inputs: Mapping[str, Any]) -> bool:
    """Whether an entry for `inputs` exists (not read, nothing logged: a cheap look before
    the entry is needed; `lookup` then reads and checks it)."""
    return entry_path({"format": FORMAT, **inputs}).exists()


def cache_is_empty() -> bool:
    """Whether this machine's cache holds no measurement (missing or empty: nothing measured
    here yet, or the cache was cleared)."""
    try:
        with os.scandir(cache_dir()) as entries:
            return not any(e.name.endswith(".json") for e in entries)
    except OSError:  # missing or unreadable: nothing to reuse
        return True


def remember(inputs: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """Keep a measurement for the next study; a cache that cannot be written only costs a
    warning."""
    inputs = {"format": FORMAT, **inputs}
    path = entry_path(inputs)
    try:
        store_entry(path, inputs, result)
    except OSError as error:
        log.warning("probe: could not cache the measurement in %s: %s", path, error)


def store_entry(path: Path, inputs: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    body = {"key": path.stem, "inputs": dict(inputs), "result": dict(result)}
    write_json(path, {**body, "checksum": stable_hash(body, 64)})


def load_entry(path: Path, required: tuple[str, ...]) -> dict[str, Any] | None:
    """The entry's result, or None (missing; damaged or foreign: with a warning)."""
    if not path.exists():
        return None
    try:
        entry = read_json(path)
        body = {k: entry[k] for k in ("key", "inputs", "result")}
        if entry.get("checksum") != stable_hash(body, 64):
            raise ValueError("checksum mismatch")
        if body["key"] != path.stem or stable_hash(body["inputs"], 40) != path.stem:
            raise ValueError("entry does not belong to this key")
        result = dict(body["result"])
        for name in required:
            value = result[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} is not a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} = {value} is not a finite number >= 0")
        return result
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("probe: ignoring damaged cache entry %s (%s); measuring again", path, error)
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
