"""The fit cache: every fit's arrays stored by content key, written by the driver alone.

Layout under `{model_cache_dir}/{model}/shards/`: one shard per finished task, `<name>.npz`
(the arrays of its fits, stacked per array name where every fit's array has the same shape,
one member per fit otherwise) plus `<name>.json`, the shard's index (keys, the array names of
each entry, one sha256 per entry). The index is written last, so a shard without one is a
shard whose write was killed: it is removed at the start of a run. Shard names are unique
(run id, task id, random suffix), so several drivers sharing one cache (a sweep, or two output
dirs with `runtime.model_cache_dir`) never write the same file; a key trained twice is stored
twice with the same bytes (one key, one result), and the first shard in name order wins.

Integrity: `verify` reads every shard a run needs and checks each entry's sha256. A shard that
cannot be read or whose entries do not match is moved to `{model}/damaged/`; its good entries
are rewritten into a new shard first, so only the damaged fits are refit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path, write_text

log = logging.getLogger("pipeline.cache")
FORMAT = 1
SHARDS_DIR = "shards"
DAMAGED_DIR = "damaged"
Entry = dict[str, np.ndarray]
# a live writer renames its index within milliseconds of its arrays; older orphans are dead
ORPHAN_AGE_S = 600.0


def entry_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over an entry's array names, dtypes, shapes and bytes (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def stacked_checksums(members: Mapping[str, np.ndarray], names: list[str], n: int) -> list[str]:
    """entry_checksum of each of `n` entries whose arrays are rows of `members[name]` (sorted
    `names`), from one byte row per entry: per name its header, then its values."""
    parts: list[np.ndarray] = []
    for name in names:
        a = np.ascontiguousarray(members[name][:n])
        row = np.ascontiguousarray(a[0])  # as entry_checksum sees it (a scalar is (1,))
        header = np.frombuffer(f"{name}|{row.dtype.str}|{row.shape}|".encode(), np.uint8)
        parts.append(np.broadcast_to(header, (n, header.size)))
        parts.append(a.reshape(n, -1).view(np.uint8).reshape(n, -1))
    rows = np.ascontiguousarray(np.concatenate(parts, axis=1))
    width, flat = rows.shape[1], memoryview(rows.reshape(-1))
    return [hashlib.sha256(flat[i * width : (i + 1) * width]).hexdigest() for i in range(n)]


@dataclass
class VerifyReport:
    """What `FitCache.verify` found: entries by key, and the damaged keys and shards by name."""

    entries: dict[str, Entry] = field(default_factory=dict)
    damaged_keys: list[str] = field(default_factory=list)
    damaged_shards: list[str] = field(default_factory=list)


class FitCache:
    """The shards of one model in one cache dir (see module docstring)."""

    def __init__(self, cache_dir: str | os.PathLike[str], model: str) -> None:
        self.root = Path(cache_dir) / model
        self.shards = self.root / SHARDS_DIR

    # --- index --------------------------------------------------------------------------

    def has_shards(self) -> bool:
        """Whether any shard index exists (a fresh cache has nothing to verify or load)."""
        return bool(self._indexes())

    def _indexes(self) -> list[Path]:
        return sorted(self.shards.glob("*.json")) if self.shards.is_dir() else []

    def _read_index(self, path: Path) -> dict | None:
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if index.get("format") != FORMAT or not isinstance(index.get("entries"), list):
                raise ValueError("not a shard index")
            return index
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def keys(self) -> set[str]:
        """Keys the indexes list (no checksum read: for the dry run and the cached mask)."""
        out: set[str] = set()
        for path in self._indexes():
            index = self._read_index(path)
            if index is not None:
                out.update(e["key"] for e in index["entries"])
        return out

    # --- write --------------------------------------------------------------------------

    def write_shard(self, entries: Mapping[str, Entry], label: str = "") -> Path | None:
        """Write entries (key -> arrays) as one new shard: arrays, then the index (atomic)."""
        if not entries:
            return None
        keys = list(entries)
        members: dict[str, np.ndarray] = {}
        index_entries = []
        names = sorted({n for e in entries.values() for n in e})
        stacked = []
        for n in names:
            arrays = [entries[k].get(n) for k in keys]
            if (
                all(a is not None for a in arrays)
                and len({(np.asarray(a).dtype.str, np.asarray(a).shape) for a in arrays}) == 1
            ):
                members[n] = np.stack([np.asarray(a) for a in arrays])
                stacked.append(n)
        for i, k in enumerate(keys):
            own = sorted(n for n in entries[k] if n not in stacked)
            for n in own:
                members[f"{i}/{n}"] = np.asarray(entries[k][n])
            index_entries.append({"key": k, "own": own, "sha256": entry_checksum(entries[k])})
        return self._write_files(label, members, stacked, json.dumps(index_entries, sort_keys=True))

    def _write_files(
        self, label: str, members: dict[str, np.ndarray], stacked: list[str], entries: str
    ) -> Path:
        """The shard's arrays, then its index (the index last: see remove_orphans).

        `entries`: the index's entry list as JSON text; the index is what
        json.dumps({"format", "stacked", "entries"}, sort_keys=True) writes."""
        name = f"{_safe(label)}-{uuid.uuid4().hex[:12]}" if label else uuid.uuid4().hex
        npz = self.shards / f"{name}.npz"
        with atomic_path(npz) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **members)
        head = f'{{"entries": {entries}, "format": {json.dumps(FORMAT)}, "stacked": '
        write_text(self.shards / f"{name}.json", f"{head}{json.dumps(stacked)}}}\n")
        return npz

    def write_stacked(
        self, keys: list[str], arrays: Mapping[str, np.ndarray], label: str = ""
    ) -> Path | None:
        """write_shard for entries whose arrays stack: `arrays[name]` is (n, ...), entry i's
        array at [i]. The same files, bytes and checksums as write_shard, without a dict or a
        hash loop per array per entry (a task's thousands of fits cost about a microsecond each)."""
        if not keys:
            return None
        n = len(keys)
        names = sorted(arrays)
        members = {name: np.ascontiguousarray(arrays[name]) for name in names}
        for name in names:
            if members[name].shape[0] != n:
                raise ValueError(f"{name}: {members[name].shape[0]} entries for {n} keys")
        sums = stacked_checksums(members, names, n)
        # the entries' JSON as json.dumps writes it, without a dict per entry; keys that are
        # plain ASCII letters and digits (content keys are hex) need no escaping
        joined = "".join(keys)
        if not (joined.isascii() and joined.isalnum()):
            quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
            keys = [quote(k)[1:-1] for k in keys]
        entry = '{{"key": "{}", "own": [], "sha256": "{}"}}'.format
        entries = ", ".join(map(entry, keys, sums))
        return self._write_files(label, members, names, f"[{entries}]")

    # --- read and verify ----------------------------------------------------------------

    def verify(
        self, wanted: Iterable[str] | None = None, keep: tuple[str, ...] | None = None
    ) -> VerifyReport:
        """Load and checksum every entry (of `wanted` keys, when given); heal damaged shards.

        `keep`: array names to return per entry (None: all), so a driver verifying a large
        cache holds only the forecasts in memory, not every fitted state."""
        want = None if wanted is None else set(wanted)
        report = VerifyReport()
        for index_path in self._indexes():
            name = index_path.stem
            index = self._read_index(index_path)
            keys = [] if index is None else [e["key"] for e in index["entries"]]
            if want is not None and index is not None and not want.intersection(keys):
                continue
            good, bad = ({}, []) if index is None else self._load_shard(name, index, keep)
            if index is None or bad:
                report.damaged_shards.append(name)
                report.damaged_keys.extend(k for k in bad if want is None or k in want)
                self._quarantine(name, good, unreadable_index=index is None)
            kept = None if keep is None else set(keep)
            for k, arrays in good.items():
                if (want is None or k in want) and k not in report.entries:
                    report.entries[k] = (
                        arrays
                        if kept is None or arrays.keys() <= kept
                        else {n: arrays[n] for n in keep or () if n in arrays}
                    )
        report.damaged_keys = sorted(set(report.damaged_keys) - set(report.entries))
        return report

    def _load_shard(
        self, name: str, index: dict, keep: tuple[str, ...] | None = None
    ) -> tuple[dict[str, Entry], list[str]]:
        """(good entries by key, damaged keys). `keep`: the arrays a good entry needs hold,
        when every entry of the shard is good (a damaged shard's good entries are rewritten
        whole into a new shard)."""
        good: dict[str, Entry] = {}
        bad: list[str] = []
        path = self.shards / f"{name}.npz"
        stacked: dict[str, np.ndarray] = {}
        try:
            with np.load(path, allow_pickle=False) as data:
                files = set(data.files)
                for n in index["stacked"]:
                    with contextlib.suppress(ValueError, OSError, zipfile.BadZipFile, EOFError):
                        stacked[n] = data[n]
                entries = index["entries"]
                names = index["stacked"]
                if (
                    entries
                    and names == sorted(names)
                    and all(not e["own"] for e in entries)
                    and all(n in stacked and len(stacked[n]) == len(entries) for n in names)
                ):  # every array stacked: the checksums in bulk
                    sums = stacked_checksums(stacked, names, len(entries))
                    fine = [d == e["sha256"] for d, e in zip(sums, entries, strict=True)]
                    held = (
                        names if keep is None or not all(fine) else [n for n in names if n in keep]
                    )
                    for i, (entry, ok) in enumerate(zip(entries, fine, strict=True)):
                        if ok:
                            good[entry["key"]] = {n: stacked[n][i] for n in held}
                        else:
                            bad.append(entry["key"])
                    return good, bad
                for i, entry in enumerate(index["entries"]):
                    arrays: Entry = {}
                    try:
                        for n in index["stacked"]:
                            arrays[n] = stacked[n][i]
                        for n in entry["own"]:
                            if f"{i}/{n}" not in files:
                                raise KeyError(n)
                            arrays[n] = data[f"{i}/{n}"]
                    except (
                        KeyError,
                        IndexError,
                        ValueError,
                        OSError,
                        zipfile.BadZipFile,
                        EOFError,
                    ):
                        bad.append(entry["key"])
                        continue
                    if entry_checksum(arrays) == entry["sha256"]:
                        good[entry["key"]] = arrays
                    else:
                        bad.append(entry["key"])
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return {}, [e["key"] for e in index["entries"]]
        return good, bad

    def _quarantine(self, name: str, good: dict[str, Entry], unreadable_index: bool) -> None:
        """Rewrite the good entries into a new shard, then move the damaged shard aside."""
        if good:
            self.write_shard(good, f"healed-{name[:40]}")
        target = self.root / DAMAGED_DIR
        target.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".npz"):
            # another driver sharing the cache may have moved it first
            with contextlib.suppress(FileNotFoundError):
                shutil.move(str(self.shards / f"{name}{suffix}"), str(target / f"{name}{suffix}"))
        what = "unreadable index" if unreadable_index else "checksum mismatch or unreadable data"
        log.warning(
            "damaged cache shard %s (%s): moved to %s; %d good entries kept, the rest will be refit",
            self.shards / f"{name}.npz",
            what,
            target,
            len(good),
        )

    # --- housekeeping -------------------------------------------------------------------

    def remove_orphans(self, min_age_s: float = ORPHAN_AGE_S) -> list[Path]:
        """Shards whose index was never written (a driver killed mid-write) and temp files
        of killed atomic writes: remove them. Only files older than `min_age_s`, since another
        driver sharing this cache may be between its two renames right now."""
        if not self.shards.is_dir():
            return []
        now = time.time()
        indexed = {p.stem for p in self.shards.glob("*.json")}
        orphans = [p for p in self.shards.glob("*.npz") if p.stem not in indexed]
        orphans += list(self.shards.glob(".*.tmp"))
        removed = []
        for p in orphans:
            try:
                if now - p.stat().st_mtime >= min_age_s:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:
                pass
        return removed


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:80]
