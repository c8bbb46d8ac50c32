"""A previous plan's content keys, reused where a fit's hashed bytes did not change (pure).

The monthly update of a study (a later `rolling_window.end_date`, new data) leaves ~97 % of
its per-country fits' windows as they were, yet a rebuilt plan hashed every fit again (~1.2
CPU-s per million rw fits, ~0.9 GB of rows). A key is sha256(prefix, country, origin, slot,
X, y, X_new) (country_keys.py), so a fit of the same group prefix, country, origin, slot and
window size whose window values are bitwise the same as in the previous plan has the same
key. Which values changed is found per (country, month) by comparing the two grids (NaN
canonical, as hashed; a month outside a grid reads NaN, as hashed), so a revised past value
(Eurostat revises data) gives a new key to exactly the fits whose window reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# per group: country index (into PlanBasis.countries), origin month, keys ((F,) S32)
Part = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PlanBasis:
    """What a per-country plan's keys were made from, kept beside them (plan_cache.py)."""

    countries: np.ndarray  # (C,) str: the grid's rows
    m0: int  # month index of the grid's first month
    features: np.ndarray  # (C, M, p) float64: the features every group reads
    size: int  # rolling_window.size
    step: int  # months between origins (the batch slot depends on it)
    prefixes: tuple[bytes, ...]  # per group: key_prefix
    leads: tuple[np.ndarray, ...]  # per group: (C, M) its target column
    parts: tuple[Part, ...]  # per group: its fits and keys


@dataclass(frozen=True)
class PreviousFits:
    """One group's previous values and keys, aligned to the new grid's countries and origins."""

    grid: np.ndarray  # (C, M0, p + 1): previous features and target (NaN: a new country)
    m0: int
    position: np.ndarray  # (C, O) int64: the previous fit's row in `keys`, or -1
    keys: np.ndarray  # (F0,) S32


def canonical(values: np.ndarray) -> np.ndarray:
    """float64 with every NaN the same bits (what a key hashes)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), np.nan, values)


def previous_fits(
    basis: PlanBasis | None,
    prefix: bytes,
    countries: list[str],
    org: np.ndarray,
    size: int,
    step: int,
    slot_period: int,
    n_features: int,
) -> PreviousFits | None:
    """The basis's fits of the group with key prefix `prefix`, aligned, or None when no key of
    it can be reused (another prefix, window size, feature count or, when slotted, origin step)."""
    if basis is None or not org.size or prefix not in basis.prefixes or basis.size != int(size):
        return None
    if basis.features.shape[2] != n_features or (slot_period > 1 and basis.step != int(step)):
        return None
    g = basis.prefixes.index(prefix)
    cidx, origin, keys = basis.parts[g]
    new = np.asarray(countries, dtype=str)
    old = np.asarray(basis.countries, dtype=str)
    order = np.argsort(new)
    found = np.searchsorted(new, old, sorter=order).clip(0, max(new.size - 1, 0))
    new_of_old = np.where(new[order[found]] == old, order[found], -1) if new.size else found - 1
    C, M0, p = new.size, basis.features.shape[1], n_features
    grid = np.full((C, M0, p + 1), np.nan)
    kept = new_of_old >= 0
    grid[new_of_old[kept], :, :p] = basis.features[kept]
    grid[new_of_old[kept], :, p] = basis.leads[g][kept]
    oi = np.searchsorted(org, origin).clip(0, max(org.size - 1, 0))
    cidx = np.asarray(cidx, dtype=np.int64)
    valid = (org[oi] == origin) & (new_of_old[cidx] >= 0)
    position = np.full((C, org.size), -1, dtype=np.int64)
    position[new_of_old[cidx[valid]], oi[valid]] = np.nonzero(valid)[0]
    return PreviousFits(grid, int(basis.m0), position, keys)


def reusable(
    previous: PreviousFits,
    pad: np.ndarray,
    pad_m0: int,
    ci: np.ndarray,
    oi: np.ndarray,
    start: np.ndarray,
    at: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(F,) bool: the fits (ci, oi) whose previous key holds, and (F,) their rows in
    previous.keys (-1 elsewhere).

    pad (C, M', p + 1): this build's canonical values (month pad_m0 + j at j), features then
    target; a fit reads the features of months start..start+n-1 and at, the target of
    start..start+n-1 (pad positions, per origin)."""
    old = np.full(pad.shape, np.nan)
    M0 = previous.grid.shape[1]
    a, b = max(pad_m0, previous.m0), min(pad_m0 + pad.shape[1], previous.m0 + M0)
    if a < b:
        old[:, a - pad_m0 : b - pad_m0] = previous.grid[:, a - previous.m0 : b - previous.m0]
    diff = canonical(old).view(np.int64) != pad.view(np.int64)  # bitwise, as hashed
    changed_x, changed_y = diff[..., :-1].any(-1), diff[..., -1]
    count_x = np.zeros((pad.shape[0], pad.shape[1] + 1), dtype=np.int64)
    count_y = np.zeros_like(count_x)
    np.cumsum(changed_x, axis=1, out=count_x[:, 1:])
    np.cumsum(changed_y, axis=1, out=count_y[:, 1:])
    # per (country, origin), then gathered once per fit (C x O is small beside F)
    s, e = start, start + n
    same = (count_x[:, e] == count_x[:, s]) & (count_y[:, e] == count_y[:, s]) & ~changed_x[:, at]
    position = np.where(same, previous.position, -1)[ci, oi]
    return position >= 0, position
