"""Which per-country fits exist and their content keys, straight from the country grid (pure).

The same fits and byte-identical keys as stacking `window_arrays` per chunk of countries and
hashing the stacked rows with `keys.bulk_keys` (tests/test_tasks.py compares them), without
its copies: the windows are never stacked. Whether a fit exists comes from a running count of
complete months; each fit's hashed row (prefix, country, origin, slot, X, y, X_new) is gathered
into one buffer reused for every chunk (~2 MiB), so the build neither faults fresh pages per chunk nor
copies a window four times (profile: issue 18, benchmarks/README.md "The fit plan's build at a
million fits").
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.runtime.fits.key_reuse import PreviousFits, reusable
from pipeline.runtime.fits.keys import KEY_BYTES

# bytes of rows gathered and hashed per chunk: they stay in a core's L2 (2 MiB here); 512 to
# 8,192 rw fits a chunk measured the same at 1M fits
CHUNK_BYTES = 2 << 20


def country_fit_keys(
    grid: np.ndarray,
    m0: int,
    org: np.ndarray,
    size: int,
    horizon: int,
    n_features: int,
    min_rows: int,
    prefix: bytes,
    cdig: np.ndarray,
    slots: np.ndarray | None = None,
    previous: PreviousFits | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(country index, origin index, keys (F,) S32) of every per-country fit, country-major.

    grid (C, M, n_features + 1) holds the features then y_lead{horizon}; a fit (c, o) exists
    when its features at origin org[o] are complete and its window (months org[o] - size + 1
    .. org[o] - horizon) holds at least `min_rows` complete months. `cdig` (C, 16) uint8:
    country_digests; `slots` (O,) int: each origin's batch slot (entered in the key), or None.
    `previous` (key_reuse.previous_fits, same prefix, size and slots): a fit whose hashed
    values are bitwise those of the previous plan takes its key from there, unhashed.
    """
    C, M, p = grid.shape[0], grid.shape[1], n_features
    n = size - int(horizon)
    first = org - size + 1 - m0  # (O,) grid month of each window's first row
    lo = min(0, int(first.min()))
    hi = max(M, int(org.max() - m0) + 1)
    # months outside the grid read NaN; every NaN canonical, as keys._row_bytes makes it
    pad = np.full((C, hi - lo, p + 1), np.nan)
    pad[:, -lo : -lo + M] = np.where(np.isnan(grid[..., : p + 1]), np.nan, grid[..., : p + 1])
    padX = np.ascontiguousarray(pad[..., :p])  # (C, M', p)
    pady = np.ascontiguousarray(pad[..., p])  # (C, M')
    complete = np.isfinite(padX).all(-1) & np.isfinite(pady)
    count = np.zeros((C, hi - lo + 1), dtype=np.int64)
    np.cumsum(complete, axis=1, out=count[:, 1:])
    start = first - lo  # (O,) window start in pad
    at = org - m0 - lo  # (O,) origin month in pad
    ok = (count[:, start + n] - count[:, start] >= min_rows) & np.isfinite(padX[:, at]).all(-1)
    ci, oi = np.nonzero(ok)  # (C, O) row-major: country-major, as the stacked chunks gave
    todo = np.arange(ci.size)
    if previous is not None:
        kept, position = reusable(previous, pad, m0 + lo, ci, oi, start, at, n)
        todo = np.nonzero(~kept)[0]
    # each window's bytes are one contiguous run of padX (and of pady): strided views, no copy
    win_X = sliding_window_view(padX.reshape(C, -1), n * p, axis=1)[:, ::p]  # (C, S, n p)
    win_y = sliding_window_view(pady, n, axis=1)  # (C, S, n)

    # the hashed row, as keys.bulk_keys lays it out: prefix, then each part as little-endian
    # int64 or float64 (the country digest's 16 bytes widened to 16 int64)
    head = len(prefix)
    widths = [16, 1, *([1] if slots is not None else []), n * p, n, p]  # in 8-byte words
    width = head + 8 * sum(widths)
    chunk = max(1, min(CHUNK_BYTES // width, todo.size))
    buf = np.empty((chunk, width), dtype=np.uint8)
    buf[:, :head] = np.frombuffer(prefix, dtype=np.uint8)
    words = buf[:, head:].view("<i8")  # (chunk, width words): head is 64 bytes
    cuts = np.cumsum([0, *widths])
    country, origin = words[:, cuts[0] : cuts[1]], words[:, cuts[1] : cuts[2]]
    slot = words[:, cuts[2] : cuts[3]] if slots is not None else None
    X, y, X_new = (
        words[:, cuts[i] : cuts[i + 1]].view("<f8") for i in range(len(widths) - 3, len(widths))
    )
    cdig64 = cdig.astype("<i8")
    sha256, digests = hashlib.sha256, []
    for f0 in range(0, todo.size, chunk):
        c, o = ci[todo[f0 : f0 + chunk]], oi[todo[f0 : f0 + chunk]]
        f = c.size
        country[:f] = cdig64[c]
        origin[:f, 0] = org[o]
        if slot is not None:
            slot[:f, 0] = slots[o]
        X[:f] = win_X[c, start[o]]
        y[:f] = win_y[c, start[o]]
        X_new[:f] = padX[c, at[o]]
        flat = memoryview(buf[:f].reshape(-1))
        digests.append(
            b"".join([sha256(flat[i : i + width]).digest() for i in range(0, f * width, width)])
        )
    hashed = np.frombuffer(b"".join(digests), dtype=f"S{KEY_BYTES}")
    if previous is None:
        return ci, oi, hashed
    keys = np.empty(ci.size, dtype=f"S{KEY_BYTES}")
    # whole 32-byte rows (an S32 element read alone would drop trailing zero bytes)
    rows = keys.view(np.uint8).reshape(-1, KEY_BYTES)
    rows[kept] = previous.keys.view(np.uint8).reshape(-1, KEY_BYTES)[position[kept]]
    rows[todo] = hashed.view(np.uint8).reshape(-1, KEY_BYTES)
    return ci, oi, keys
