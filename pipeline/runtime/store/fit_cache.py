"""The fit cache: every fit's arrays stored by content key, written by the driver alone.

Layout under `{model_cache_dir}/{model}/shards/`: one shard per finished task, `<name>.npz`
(the arrays of its fits, stacked per array name where every fit's array has the same shape,
one member per fit otherwise) plus `<name>.idx`, the shard's index (its keys, names and
checksums: shard_format.py; `<name>.json` in formats 1 and 2, still read). The index is written
last, so a shard without one is a shard whose write was killed: it is removed at the start of a
run. Shard names are unique (run id, task id, random suffix), so several drivers sharing one
cache (a sweep, or two output dirs with `runtime.model_cache_dir`) never write the same file; a
key trained twice is stored twice with the same bytes (one key, one result), and the first
shard in name order wins.

Integrity: one sha256 per block of consecutive entries (1,024 by default), over the block's
keys and its rows of every array. A run's `lookup` matches its wanted keys against each
index's raw keys in bulk, reads only the shards holding a key it still needs and checks every
block of such a shard before using any of its rows (columnar: no object per entry); `check`
(`python -m pipeline verify`) checks every shard on demand. A shard that cannot be read or
whose blocks do not all match is moved to `{model}/damaged/`; the entries of its good blocks
are rewritten into a new shard first, so only the damaged blocks' fits are refit (a damaged
entry costs its block: up to 1,024 refits). `verify` returns entries by key (tests, tools).
Shards of formats 1 (a sha256 per entry; before issue 18's second pass), 2 and 3 (every
array stored; before issue 18's item 7 at 1M) are still read; shards are written in format 4.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_path
from pipeline.runtime.store.key_match import KeyMatcher
from pipeline.runtime.store.shard_format import (
    BLOCK,
    FORMAT,
    KEY_BYTES,
    SUFFIX,
    Index,
    block_sums,
    entry_checksum,
    index_file,
    key_text,
    parse_index,
    raw_key_bytes,
)
from pipeline.runtime.store.shard_pack import array_digests, bind_keys, encode_arrays, pack
from pipeline.runtime.store.shard_read import Entry, ShardArrays, read_checked

__all__ = ["FORMAT", "CheckReport", "Entry", "FitCache", "Found", "VerifyReport", "entry_checksum"]

log = logging.getLogger("pipeline.cache")
SHARDS_DIR = "shards"
DAMAGED_DIR = "damaged"
# a live writer renames its index within milliseconds of its arrays; older orphans are dead
ORPHAN_AGE_S = 600.0
INDEX_SUFFIXES = tuple(sorted(set(SUFFIX.values())))  # an index of any format written


@dataclass
class VerifyReport:
    """What `FitCache.verify` found: entries by key, and the damaged keys and shards by name."""

    entries: dict[str, Entry] = field(default_factory=dict)
    damaged_keys: list[str] = field(default_factory=list)
    damaged_shards: list[str] = field(default_factory=list)


@dataclass
class Found:
    """What `FitCache.lookup` found, columnar: `index`, the positions in `wanted` of the
    entries found good (in no particular order), `arrays[name]` their arrays in that order;
    `damaged`, the positions of wanted entries found only in damaged blocks (refit them)."""

    index: np.ndarray
    arrays: dict[str, np.ndarray]
    damaged: np.ndarray
    damaged_shards: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """What `FitCache.check` found: distinct keys checked good, distinct keys found only in
    damaged blocks (to refit), and the damaged shards by name."""

    fits: int = 0
    damaged: int = 0
    damaged_shards: list[str] = field(default_factory=list)


class FitCache:
    """The shards of one model in one cache dir (see module docstring). `block`: entries per
    checksum in the shards it writes."""

    def __init__(self, cache_dir: str | os.PathLike[str], model: str, block: int = BLOCK) -> None:
        self.root = Path(cache_dir) / model
        self.shards = self.root / SHARDS_DIR
        self.block = block

    # --- index --------------------------------------------------------------------------

    def has_shards(self) -> bool:
        """Whether any shard index exists (a fresh cache has nothing to verify or load)."""
        return bool(self._indexes())

    def _indexes(self) -> list[Path]:
        """Every shard's index file (any format), in shard name order."""
        if not self.shards.is_dir():
            return []
        return sorted(
            (p for s in INDEX_SUFFIXES for p in self.shards.glob(f"*{s}")), key=lambda p: p.stem
        )

    def _read_index(self, path: Path) -> Index | None:
        try:
            return parse_index(path.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            return None

    def keys(self) -> set[str]:
        """Keys the indexes list (no checksum read: for the dry run and the cached mask)."""
        out: set[str] = set()
        for path in self._indexes():
            index = self._read_index(path)
            if index is not None:
                out.update(index.keys)
        return out

    # --- write --------------------------------------------------------------------------

    def write_shard(self, entries: Mapping[str, Entry], label: str = "") -> Path | None:
        """Write entries (key -> arrays) as one new shard: arrays, then the index (atomic)."""
        if not entries:
            return None
        keys = list(entries)
        values = [entries[k] for k in keys]
        stacked: dict[str, np.ndarray] = {}
        for n in sorted({n for e in values for n in e}):
            arrays = [None if n not in e else np.asarray(e[n]) for e in values]
            if all(a is not None for a in arrays) and (
                len({(a.dtype.str, a.shape) for a in arrays}) == 1  # type: ignore[union-attr]
            ):
                stacked[n] = np.stack(arrays)  # type: ignore[arg-type]
        own = [{n: np.asarray(v) for n, v in e.items() if n not in stacked} for e in values]
        raw = raw_key_bytes(keys)
        layout = None
        if raw is not None:  # content keys: format 4, its stacked arrays packed
            stored, layout = pack(stacked)
            digests = array_digests(stored, own, len(keys), self.block, layout)
            sums = bind_keys(raw, digests, self.block)
        else:  # other keys (tests' names): format 2
            stored, sums = stacked, block_sums(key_text(keys), stacked, own, len(keys), self.block)
        members = {**stored, **{f"{i}/{n}": a for i, o in enumerate(own) for n, a in o.items()}}
        names = [list(o) for o in own]
        index = index_file(keys, list(stacked), names, sums, self.block, layout)
        return self._write_files(label, members, index)

    def write_stacked(
        self, keys: Sequence[str] | np.ndarray, arrays: Mapping[str, np.ndarray], label: str = ""
    ) -> Path | None:
        """write_shard for entries whose arrays stack: `arrays[name]` is (n, ...), entry i's
        array at [i]; `keys`: str, or the raw 32-byte digests as (n, 32) uint8 or (n,) S32.
        The same files and bytes as write_shard, with no Python call per entry."""
        n = len(keys)
        if not n:
            return None
        if raw_key_bytes(keys) is None:  # not content keys: format 2, entry by entry
            names = list(arrays)
            entries = {str(k): {nm: arrays[nm][i] for nm in names} for i, k in enumerate(keys)}
            return self.write_shard(entries, label)
        return self.write_encoded(keys, encode_arrays(arrays, self.block), label)

    def write_encoded(
        self, keys: Sequence[str] | np.ndarray, shard: Mapping[str, Any], label: str = ""
    ) -> Path:
        """A shard of content `keys` whose arrays are encoded already (shard_pack.encode_arrays:
        by a worker, for its task's fits), written as write_stacked writes its files: the
        arrays, then the index, whose block checksums bind these keys to the shard's digests
        (shard_pack.bind_keys: the keys never travel to the worker)."""
        raw = raw_key_bytes(keys)
        if raw is None:
            raise ValueError("an encoded shard's keys must be content keys")
        sums = bind_keys(raw, shard["digests"], self.block)
        if len(sums) != -(-len(keys) // self.block):
            raise ValueError(f"{len(sums)} checksums for {len(keys)} entries of {self.block}")
        index = index_file(keys, shard["names"], None, sums, self.block, shard["layout"])
        return self._write_bytes(label, shard["npz"], index)

    def _write_files(
        self,
        label: str,
        members: dict[str, np.ndarray],
        index: tuple[str, list[bytes | memoryview]],
    ) -> Path:
        """A shard of arrays `members` (np.savez) and its index file (suffix, bytes)."""
        buffer = io.BytesIO()
        np.savez(buffer, **members)
        return self._write_bytes(label, buffer.getvalue(), index)

    def _write_bytes(
        self, label: str, npz: bytes, index: tuple[str, list[bytes | memoryview]]
    ) -> Path:
        """The shard's arrays, then its index, its parts one after the other (the index last:
        see remove_orphans)."""
        name = f"{_safe(label)}-{uuid.uuid4().hex[:12]}" if label else uuid.uuid4().hex
        path = self.shards / f"{name}.npz"
        with atomic_path(path) as tmp:
            tmp.write_bytes(npz)
        suffix, parts = index
        with atomic_path(self.shards / f"{name}{suffix}") as tmp, open(tmp, "wb") as out:
            for part in parts:  # unbuffered past the buffer's size: a view is not copied
                out.write(part)
        return path

    # --- read and verify ----------------------------------------------------------------

    def lookup(self, wanted: np.ndarray, keep: Sequence[str] = ("pred", "alpha")) -> Found:
        """The cached entries of `wanted` content keys ((W,) S32 raw digests, or (W, 32)
        uint8, each key once), columnar: their positions in `wanted` and their arrays `keep`
        stacked in that order (arrays of one shape per name), with no object per entry.
        Only shards holding a wanted key not found in an earlier shard (name order) are
        read; each is checked block by block before any of its rows is used, and a damaged
        one is healed (see module docstring)."""
        wanted = np.ascontiguousarray(wanted).view(f"S{KEY_BYTES}").ravel()
        match = KeyMatcher(wanted)
        found = np.zeros(wanted.size, dtype=bool)
        damaged = np.zeros(wanted.size, dtype=bool)
        parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        out = Found(np.zeros(0, np.int64), {}, np.zeros(0, np.int64))
        for index_path in self._indexes() if wanted.size else ():
            name = index_path.stem
            index = self._read_index(index_path)
            if index is None:
                out.damaged_shards.append(name)
                self._quarantine(name, None, unreadable_index=True)
                continue
            raw = index.raw_keys()
            rows, where = match(raw) if raw is not None else (np.zeros(0, np.int64),) * 2
            fresh = ~found[where]
            rows, where = rows[fresh], where[fresh]
            if not rows.size:
                continue  # nothing of it is used: not read
            read = self._read_checked(name, index)
            fine = read.fine if read is not None else np.zeros(index.n, dtype=bool)
            if not fine.all():
                out.damaged_shards.append(name)
                self._quarantine(name, read, unreadable_index=False)
            damaged[where[~fine[rows]]] = True
            ok = fine[rows] & (read.has(keep, rows) if read is not None else False)
            rows, where = rows[ok], where[ok]
            if rows.size and read is not None:
                found[where] = True
                parts.append((where, {nm: read.rows(nm, rows) for nm in keep}))
        if parts:
            out.index = np.concatenate([w for w, _ in parts])
            out.arrays = {nm: np.concatenate([a[nm] for _, a in parts]) for nm in keep}
        out.damaged = np.nonzero(damaged & ~found)[0]
        return out

    def check(self) -> CheckReport:
        """Check every shard's checksums and heal the damaged ones (`python -m pipeline
        verify`), counting distinct keys columnar: no object per content key."""
        good: list[np.ndarray] = []
        bad: list[np.ndarray] = []
        good_listed: set[str] = set()
        bad_listed: set[str] = set()
        report = CheckReport()
        for index_path in self._indexes():
            name = index_path.stem
            index = self._read_index(index_path)
            read = None if index is None else self._read_checked(name, index)
            if index is None or read is None or not read.fine.all():
                report.damaged_shards.append(name)
                self._quarantine(name, read, unreadable_index=index is None)
            if index is None:
                continue
            fine = read.fine if read is not None else np.zeros(index.n, dtype=bool)
            raw = index.raw_keys()
            if raw is not None:
                good.append(raw[fine])
                bad.append(raw[~fine])
            else:
                for key, ok in zip(index.keys, fine.tolist(), strict=True):
                    (good_listed if ok else bad_listed).add(key)
        found = np.unique(np.concatenate(good)) if good else np.zeros(0, f"S{KEY_BYTES}")
        lost = np.unique(np.concatenate(bad)) if bad else found[:0]
        report.fits = found.size + len(good_listed)
        report.damaged = int(np.setdiff1d(lost, found, assume_unique=True).size) + len(
            bad_listed - good_listed
        )
        return report

    def verify(
        self, wanted: Iterable[str] | None = None, keep: tuple[str, ...] | None = None
    ) -> VerifyReport:
        """Load and checksum every entry (of `wanted` keys, when given); heal damaged shards.
        Entries by key (a dict per entry): for `python -m pipeline verify` and tests; a run
        uses `lookup`.

        `keep`: array names to return per entry (None: all)."""
        want = None if wanted is None else set(wanted)
        report = VerifyReport()
        for index_path in self._indexes():
            name = index_path.stem
            index = self._read_index(index_path)
            keys = None if index is None else index.keys
            if want is not None and keys is not None and want.isdisjoint(keys):
                continue
            read = None if index is None else self._read_checked(name, index)
            fine = np.zeros(len(keys or ()), bool) if read is None else read.fine
            if index is None or not fine.all():
                report.damaged_shards.append(name)
                bad = [keys[i] for i in np.nonzero(~fine)[0].tolist()] if keys else []
                report.damaged_keys.extend(k for k in bad if want is None or k in want)
                self._quarantine(name, read, unreadable_index=index is None)
            if read is None or keys is None:
                continue
            names = read.names() if keep is None else [n for n in keep if n in read.names()]
            for i in np.nonzero(fine)[0].tolist():
                k = keys[i]
                if (want is None or k in want) and k not in report.entries:
                    report.entries[k] = read.entry(i, names)
        report.damaged_keys = sorted(set(report.damaged_keys) - set(report.entries))
        return report

    def _read_checked(self, name: str, index: Index) -> ShardArrays | None:
        return read_checked(self.shards / f"{name}.npz", index)

    def _rewrite_good(self, read: ShardArrays, label: str) -> None:
        """Write a damaged shard's confirmed entries, whole, as a new shard."""
        good = np.nonzero(read.fine)[0]
        raw = read.index.raw_keys()
        if raw is not None and not read.own:  # columnar: no object per entry
            self.write_stacked(raw[good], {n: a[good] for n, a in read.stacked.items()}, label)
            return
        keys = read.index.keys
        self.write_shard({keys[i]: read.entry(i) for i in good.tolist()}, label)

    def _quarantine(self, name: str, read: ShardArrays | None, unreadable_index: bool) -> None:
        """Rewrite the good entries into a new shard, then move the damaged shard aside."""
        good = 0 if read is None else int(read.fine.sum())
        if read is not None and good:
            self._rewrite_good(read, f"healed-{name[:40]}")
        target = self.root / DAMAGED_DIR
        target.mkdir(parents=True, exist_ok=True)
        for suffix in (*INDEX_SUFFIXES, ".npz"):
            # another driver sharing the cache may have moved it first
            with contextlib.suppress(FileNotFoundError):
                shutil.move(str(self.shards / f"{name}{suffix}"), str(target / f"{name}{suffix}"))
        what = "unreadable index" if unreadable_index else "checksum mismatch or unreadable data"
        log.warning(
            "damaged cache shard %s (%s): moved to %s; %d good entries kept, the rest will be refit",
            self.shards / f"{name}.npz",
            what,
            target,
            good,
        )

    # --- housekeeping -------------------------------------------------------------------

    def remove_orphans(self, min_age_s: float = ORPHAN_AGE_S) -> list[Path]:
        """Shards whose index was never written (a driver killed mid-write) and temp files
        of killed atomic writes: remove them. Only files older than `min_age_s`, since another
        driver sharing this cache may be between its two renames right now."""
        if not self.shards.is_dir():
            return []
        now = time.time()
        indexed = {p.stem for p in self._indexes()}
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
