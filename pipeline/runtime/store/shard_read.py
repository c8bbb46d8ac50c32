"""A fit-cache shard as read back (pure: numpy).

A run reloads its cached fits columnar: the shard's stacked arrays and the entries its block
checksums confirm (`fine`), never a Python object per entry (fit_cache.FitCache.lookup finds
the rows of the keys it wants with key_match.KeyMatcher).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.runtime.store.shard_format import Index

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
