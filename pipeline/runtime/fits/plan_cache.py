"""The fit plan on disk: each per-country group's fits (country, origin) and content keys,
kept between processes so that the stages of one study (`dvc repro`: one process per stage)
build a model's keys once, not once per stage (issue 18 item 1).

Building a group hashes every fit's window (about 6 KB per ar_qr fit, 10 us per fit on this
machine); loading its entry costs about 50 bytes per fit read. An entry is named by
everything its groups depend on (`plan_name`: the panel's columns the groups read, the whole
study config, what the adapter tells the groups, and the source of the modules that build
them), so a changed input never finds a stale plan. It is derived data: an unreadable or
damaged entry is removed and rebuilt, never trusted. Damage is found by the zip's own CRC-32
of each array, which Python's zipfile checks as the array is read to its end (every array
read here is, before any of its keys is used), and by the parts' shapes; a sha256 over the
same bytes besides (format 3) cost as much again as the read (0.04 CPU-s per million fits).

Where: `$QPIPE_PLAN_CACHE`, else `plans/` inside `$QPIPE_PROBE_CACHE` when that is set (tests
point it at a temp dir), else `$XDG_CACHE_HOME/qpipe/plans`, else `~/.cache/qpipe/plans`. The
driver alone reads and writes it (atomic writes); at most KEEP entries stay, the least
recently used go first, and so do older entries beyond KEEP_BYTES in all (the newest entry
always stays), so that a 10M-fit plan (about 630 MB with its basis) does not leave gigabytes
in a user's home.
Pooled (panel) groups are not kept: their windows are the plan.

An entry also keeps what its keys were made from (key_reuse.PlanBasis: the grid's features
and targets, the groups' key prefixes, the window size and origin step), and its name starts
with its model's *family* (the model, what the adapter tells the groups and the code: not the
config or panel). A plan built anew (the monthly update: a later end date, new or revised
data) takes the keys of unchanged fits from the newest entry of its family instead of
hashing them (`previous`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_path, open_npz, stable_hash
from pipeline.runtime.fits.key_reuse import PlanBasis
from pipeline.runtime.fits.keys import KEY_BYTES, raw_keys

log = logging.getLogger("pipeline.train")
ENV_VAR = "QPIPE_PLAN_CACHE"
# 2: the plan's basis kept with it, entries named by family first; 3: the groups' parts and
# the basis checksummed apart, so that a stage that needs only the parts (train, probe,
# assemble) reads and hashes only them (a quarter less at rw 1M); 4: no sha256 checksums,
# the zip's CRC-32 per array alone (see the module docstring), and the panel's digest over
# the columns the groups read
FORMAT = 4
KEEP = 8  # entries kept (a 1M-fit rw plan is about 63 MB)
KEEP_BYTES = 1 << 30  # and at most this much in all, the newest entry whatever its size
# the modules whose code decides a group's fits and keys: a change to any renames every entry
SOURCES = (
    "pipeline.runtime.fits.fit_groups",
    "pipeline.runtime.fits.fit_rows",
    "pipeline.runtime.fits.keys",
    "pipeline.runtime.fits.country_keys",
    "pipeline.runtime.fits.key_reuse",
    "pipeline.runtime.fits.fit_windows",
    "pipeline.data.windows",
    "pipeline.schema",
)

# per group: country index, origin month, keys ((F,) S32 raw digests)
Part = tuple[np.ndarray, np.ndarray, np.ndarray]


def cache_dir() -> Path:
    """Where plans are kept (see the module docstring)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if os.environ.get("QPIPE_PROBE_CACHE"):
        return Path(os.environ["QPIPE_PROBE_CACHE"]) / "plans"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qpipe" / "plans"


def _source_digest() -> str:
    """sha256 of SOURCES' files, found without importing them (pipeline.data.windows would
    bring pandas into the probe and train processes)."""
    import importlib.util

    digest = hashlib.sha256()
    for name in SOURCES:
        spec = importlib.util.find_spec(name)
        path = spec.origin if spec is not None else None
        digest.update(Path(path).read_bytes() if path else name.encode())
    return digest.hexdigest()


def plan_name(model: str, adapter_facts: dict[str, Any], config_hash: str, panel: str) -> str:
    """The entry's name: its family, then a digest of everything the model's groups depend on."""
    family = {"format": FORMAT, "model": model, "adapter": adapter_facts, "code": _source_digest()}
    what = {"family": family, "config": config_hash, "panel": panel}
    return f"{model}-{stable_hash(family, length=16)}-{stable_hash(what, length=32)}"


def previous(name: str) -> PlanBasis | None:
    """The basis of the most recently used other entry of `name`'s family, or None."""
    family = name.rsplit("-", 1)[0]
    others = []
    for path in cache_dir().glob(f"{family}-*.npz"):
        with contextlib.suppress(OSError):
            if path.stem != name and path.stem.rsplit("-", 1)[0] == family:
                others.append((path.stat().st_mtime, path.stem))
    for _, other in sorted(others, reverse=True)[:1]:
        entry = load_entry(other)
        return entry[1] if entry is not None else None
    return None


def load(name: str) -> list[Part] | None:
    """The groups' parts of entry `name`, or None (absent, unreadable or damaged: removed);
    its basis is neither read nor checked."""
    entry = load_entry(name, basis=False)
    return entry[0] if entry is not None else None


def _is_part(array_name: str) -> bool:
    return array_name.endswith(("_country", "_origin", "_keys"))


def load_entry(name: str, basis: bool = True) -> tuple[list[Part], PlanBasis | None] | None:
    """The groups' parts of entry `name` and its basis (None if saved without one, or not
    asked for), or None (absent, unreadable or damaged: removed). `basis=False` reads (and
    checks) the parts alone."""
    path = cache_dir() / f"{name}.npz"
    if not path.is_file():
        return None
    try:
        with open_npz(path) as data:  # each array read whole: its CRC-32 checked (BadZipFile)
            wanted = [k for k in data.files if basis or _is_part(k)]
            arrays = {k: data[k] for k in wanted}
        parts = []
        for g in range(sum(k.endswith("_keys") for k in arrays)):
            country, origin, raw = (arrays[f"{g}_{k}"] for k in ("country", "origin", "keys"))
            if (
                country.ndim != 1
                or origin.shape != country.shape
                or raw.shape != (country.size, KEY_BYTES)
                or raw.dtype != np.uint8
                or country.dtype.kind != "i"
                or origin.dtype.kind != "i"
            ):
                raise ValueError(f"group {g}'s parts do not match")
            parts.append((country, origin, raw.view(f"S{KEY_BYTES}").ravel()))  # raw digests
        basis = _basis(arrays, parts) if "basis_features" in arrays else None  # or not read
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.info("fit plan %s unreadable (%s): rebuilt", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: pruned last
    return parts, basis


def _basis(arrays: dict[str, np.ndarray], parts: list[Part]) -> PlanBasis:
    size, step, m0 = (int(v) for v in arrays["basis_size_step_m0"])
    return PlanBasis(
        countries=arrays["basis_countries"],
        m0=m0,
        features=arrays["basis_features"],
        size=size,
        step=step,
        prefixes=tuple(arrays[f"{g}_prefix"].tobytes() for g in range(len(parts))),
        leads=tuple(arrays[f"{g}_lead"] for g in range(len(parts))),
        parts=tuple(parts),
    )


def save(name: str, parts: list[Part], basis: PlanBasis | None = None) -> None:
    """Keep the groups' parts (and what their keys were made from) as entry `name` (atomic);
    drop the least recently used beyond KEEP. A cache that cannot be written is skipped: it
    only saves time."""
    arrays: dict[str, np.ndarray] = {}  # the parts first in the file, then the basis
    for g, (country, origin, keys) in enumerate(parts):
        arrays[f"{g}_country"] = np.asarray(country, dtype=np.int64)
        arrays[f"{g}_origin"] = np.asarray(origin, dtype=np.int64)
        keys = np.asarray(keys)  # raw digests (S32), or their hex
        raw = keys.view(np.uint8).reshape(-1, KEY_BYTES) if keys.dtype.kind == "S" else None
        arrays[f"{g}_keys"] = raw_keys(keys) if raw is None else raw
    if basis is not None:
        arrays["basis_countries"] = np.asarray(basis.countries, dtype=str)
        arrays["basis_features"] = np.asarray(basis.features, dtype=np.float64)
        arrays["basis_size_step_m0"] = np.array([basis.size, basis.step, basis.m0], np.int64)
        for g, (prefix, lead) in enumerate(zip(basis.prefixes, basis.leads, strict=True)):
            arrays[f"{g}_prefix"] = np.frombuffer(prefix, dtype=np.uint8)
            arrays[f"{g}_lead"] = np.asarray(lead, dtype=np.float64)
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / f"{name}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # stored, each array with its CRC-32
        _prune(root)
    except OSError as exc:
        log.info("fit plan not kept in %s (%s)", root, exc)


def _prune(root: Path) -> None:
    """Keep the KEEP most recently used entries that fit in KEEP_BYTES (the newest always)."""
    entries = []
    for path in root.glob("*.npz"):
        with contextlib.suppress(OSError):  # another driver removed it meanwhile
            stat = path.stat()
            entries.append((stat.st_mtime, stat.st_size, path))
    entries.sort(key=lambda e: e[0], reverse=True)
    kept_bytes = 0
    for rank, (_, size, path) in enumerate(entries):
        kept_bytes += size
        if rank >= KEEP or (rank > 0 and kept_bytes > KEEP_BYTES):
            with contextlib.suppress(OSError):
                path.unlink()
