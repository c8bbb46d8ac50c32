"""The fit plan on disk: each per-country group's fits (country, origin) and content keys,
kept between processes so that the stages of one study (`dvc repro`: one process per stage)
build a model's keys once, not once per stage (issue 18 item 1).

Building a group hashes every fit's window (about 6 KB per ar_qr fit, 10 us per fit on this
machine); loading its entry costs about 50 bytes per fit read and one checksum. An entry is
named by everything its groups depend on (`plan_name`: the panel's content, the whole study
config, what the adapter tells the groups, and the source of the modules that build them), so
a changed input never finds a stale plan. It is derived data: an unreadable or damaged entry
(its checksum over its arrays does not match) is removed and rebuilt, never trusted.

Where: `$QPIPE_PLAN_CACHE`, else `plans/` inside `$QPIPE_PROBE_CACHE` when that is set (tests
point it at a temp dir), else `$XDG_CACHE_HOME/qpipe/plans`, else `~/.cache/qpipe/plans`. The
driver alone reads and writes it (atomic writes); at most KEEP entries stay, the least
recently used go first, and so do older entries beyond KEEP_BYTES in all (the newest entry
always stays), so that a 10M-fit plan (about 480 MB) does not leave gigabytes in a user's home.
Pooled (panel) groups are not kept: their windows are the plan.
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

from pipeline.io import atomic_path, stable_hash
from pipeline.runtime.fits.keys import KEY_BYTES, raw_keys

log = logging.getLogger("pipeline.train")
ENV_VAR = "QPIPE_PLAN_CACHE"
FORMAT = 1
KEEP = 8  # entries kept (a 1M-fit rw plan is about 48 MB)
KEEP_BYTES = 1 << 30  # and at most this much in all, the newest entry whatever its size
# the modules whose code decides a group's fits and keys: a change to any renames every entry
SOURCES = (
    "pipeline.runtime.fits.fit_groups",
    "pipeline.runtime.fits.keys",
    "pipeline.runtime.fits.country_keys",
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
    import importlib

    digest = hashlib.sha256()
    for name in SOURCES:
        path = getattr(importlib.import_module(name), "__file__", None)
        digest.update(Path(path).read_bytes() if path else name.encode())
    return digest.hexdigest()


def plan_name(model: str, adapter_facts: dict[str, Any], config_hash: str, panel: str) -> str:
    """The entry's name: a digest of everything the model's groups depend on."""
    what = {
        "format": FORMAT,
        "model": model,
        "adapter": adapter_facts,
        "config": config_hash,
        "panel": panel,
        "code": _source_digest(),
    }
    return f"{model}-{stable_hash(what, length=40)}"


def _checksum(arrays: dict[str, np.ndarray]) -> np.ndarray:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8)


def load(name: str) -> list[Part] | None:
    """The groups' parts of entry `name`, or None (absent, unreadable or damaged: removed)."""
    path = cache_dir() / f"{name}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        stored = arrays.pop("checksum")
        if not np.array_equal(stored, _checksum(arrays)):
            raise ValueError("checksum mismatch")
        parts = []
        for g in range(len(arrays) // 3):
            keys = arrays[f"{g}_keys"].view(f"S{KEY_BYTES}").ravel()  # raw digests
            parts.append((arrays[f"{g}_country"], arrays[f"{g}_origin"], keys))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.info("fit plan %s unreadable (%s): rebuilt", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: pruned last
    return parts


def save(name: str, parts: list[Part]) -> None:
    """Keep the groups' parts as entry `name` (atomic); drop the least recently used beyond
    KEEP. A cache that cannot be written is skipped: it only saves time."""
    arrays: dict[str, np.ndarray] = {}
    for g, (country, origin, keys) in enumerate(parts):
        arrays[f"{g}_country"] = np.asarray(country, dtype=np.int64)
        arrays[f"{g}_origin"] = np.asarray(origin, dtype=np.int64)
        keys = np.asarray(keys)  # raw digests (S32), or their hex
        raw = keys.view(np.uint8).reshape(-1, KEY_BYTES) if keys.dtype.kind == "S" else None
        arrays[f"{g}_keys"] = raw_keys(keys) if raw is None else raw
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / f"{name}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, checksum=_checksum(arrays), **arrays)
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
