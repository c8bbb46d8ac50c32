"""A fit-cache shard as read back, and content keys matched in bulk (pure: numpy).

A run reloads its cached fits columnar: the shard's stacked arrays, the entries its block
checksums confirm (`fine`), and the rows of a wanted key found by one sorted search over the
run's keys, never a Python object per entry (fit_cache.FitCache.lookup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.runtime.store.shard_format import KEY_BYTES, Index

Entry = dict[str, np.ndarray]


@dataclass
class ShardArrays:
    """One shard's arrays as read: stacked ones (n, ...), ragged ones per entry, and which
    entries their checksums confirm."""

    index: Index
    stacked: dict[str, np.ndarray]
    own: list[Entry]  # per entry; [] when no entry has arrays of its own
    fine: np.ndarray  # (n,) bool

    def names(self) -> list[str]:
        """Every array name the shard holds."""
        return sorted(set(self.stacked).union(*(o.keys() for o in self.own)))

    def entry(self, i: int, names: Sequence[str] | None = None) -> Entry:
        """Entry i's arrays (`names` of them, None: all) as a dict."""
        own = self.own[i] if self.own else {}
        if names is None:
            return {**{n: a[i] for n, a in self.stacked.items()}, **own}
        return {
            n: self.stacked[n][i] if n in self.stacked else own[n]
            for n in names
            if n in own or n in self.stacked
        }

    def has(self, names: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """(len(rows),) bool: the entries `rows` hold every array `names`."""
        ok = np.ones(rows.size, dtype=bool)
        for n in names:
            if n not in self.stacked:
                ok &= np.array([bool(self.own) and n in self.own[r] for r in rows.tolist()], bool)
        return ok

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Array `name` of the entries `rows`, stacked."""
        if name in self.stacked:
            return self.stacked[name][rows]
        return np.stack([self.own[r][name] for r in rows.tolist()])


class KeyMatcher:
    """Finds content keys ((n,) S32) among `wanted` ((W,) S32, unique keys) in bulk: a sorted
    search on each key's first 8 bytes (an integer: several times faster than on 32-byte
    strings), every hit then compared whole. Should two wanted keys share their first 8 bytes
    (about 1 in 10^7 at a million keys) it searches the whole keys instead."""

    def __init__(self, wanted: np.ndarray) -> None:
        self.wanted = np.ascontiguousarray(wanted).view(f"S{KEY_BYTES}").ravel()
        self.by_prefix = True
        head = _prefix(self.wanted)
        self.order = np.argsort(head, kind="stable")
        self.sorted: np.ndarray = head[self.order]
        if self.sorted.size > 1 and not np.all(self.sorted[1:] != self.sorted[:-1]):
            self.by_prefix = False
            self.order = np.argsort(self.wanted, kind="stable")
            self.sorted = self.wanted[self.order]

    def __call__(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of `keys` that are wanted, their positions in `wanted`)."""
        keys = np.ascontiguousarray(keys).view(f"S{KEY_BYTES}").ravel()
        if not self.sorted.size or not keys.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        probe = _prefix(keys) if self.by_prefix else keys
        # searched in sorted order: each search starts near the last (5x fewer cache misses
        # than random order on a million keys)
        ordered = np.argsort(probe, kind="stable")
        pos = np.empty(probe.size, dtype=np.intp)
        pos[ordered] = np.searchsorted(self.sorted, probe[ordered])
        np.minimum(pos, self.sorted.size - 1, out=pos)
        rows = np.nonzero(self.sorted[pos] == probe)[0]
        where = self.order[pos[rows]]
        whole = self.wanted[where] == keys[rows]  # the prefix matched: now the whole key
        return rows[whole], where[whole].astype(np.int64)


def _prefix(keys: np.ndarray) -> np.ndarray:
    """Each key's first 8 bytes as a native uint64 (big-endian: the order of the bytes)."""
    return (
        np.ascontiguousarray(keys).view(">u8").reshape(-1, KEY_BYTES // 8)[:, 0].astype(np.uint64)
    )
