"""A fit-cache shard as read back and checked (numpy: its .npz read, its checksums compared).

A run reloads its cached fits columnar: the shard's stacked arrays and the entries its block
checksums confirm (`read_checked`: `fine`), never a Python object per entry
(fit_cache.FitCache.lookup finds the rows of the keys it wants with key_match.KeyMatcher).
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import open_npz
from pipeline.runtime.store.shard_format import Index, block_sums, entry_checksum
from pipeline.runtime.store.shard_pack import array_digests, bind_keys, unpack

Entry = dict[str, np.ndarray]
# what reading one array or member of a damaged shard raises
_UNREADABLE = (KeyError, IndexError, ValueError, OSError, zipfile.BadZipFile, EOFError)


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


def read_checked(path: Path, index: Index) -> ShardArrays | None:
    """The arrays of the shard at `path` (its .npz; `index` its index) and which entries
    their checksums confirm; None when its arrays cannot be read at all (an array or member
    that cannot be read leaves its entries unconfirmed)."""
    n = index.n
    stacked: dict[str, np.ndarray] = {}
    own: list[Entry] = [{} for _ in range(n)] if any(index.own) else []
    try:
        with open_npz(path) as data:
            files = set(data.files)
            for nm in index.stacked:
                if nm in index.nan:  # format 4: not stored
                    continue
                with contextlib.suppress(*_UNREADABLE):
                    stacked[nm] = data[nm]
            for i, names in enumerate(index.own if own else ()):
                for nm in names:
                    if f"{i}/{nm}" in files:
                        with contextlib.suppress(*_UNREADABLE):
                            own[i][nm] = data[f"{i}/{nm}"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    stored = [nm for nm in index.stacked if nm not in index.nan]
    complete = all(nm in stacked and len(stacked[nm]) == n for nm in stored)
    fine = np.zeros(n, dtype=bool)
    if complete and index.format == 4:
        layout = {"nan": index.nan, "codes": index.codes}
        digests = array_digests(stacked, own or None, n, index.block, layout)
        sums = bind_keys(index.key_bytes, digests, index.block)
        ok = np.array([a == b for a, b in zip(sums, index.sums, strict=True)], dtype=bool)
        stacked = unpack(stacked, n, layout)  # as written: NaN made again, codes looked up
        if len(stacked) == len(index.stacked):  # else a code out of its table: none checks
            fine = np.repeat(ok, index.block)[:n]
    elif complete and index.format == 1:
        for i in range(n):
            mine = own[i] if own else {}
            if len(mine) == len(index.own[i]):
                arrays = {**{nm: stacked[nm][i] for nm in index.stacked}, **mine}
                fine[i] = entry_checksum(arrays) == index.sums[i]
    elif complete:
        keys = index.key_bytes or index.keys
        sums = block_sums(keys, stacked, own or None, n, index.block)
        ok = np.array([a == b for a, b in zip(sums, index.sums, strict=True)], dtype=bool)
        fine = np.repeat(ok, index.block)[:n]
    return ShardArrays(index, stacked, own, fine)
