"""Format 4's arrays of a fit-cache shard: packed (an all-NaN array as a flag in the index, a
str array as codes into a table there) and digested per block without the keys, so that a
worker encodes its task's shard from its arrays alone and the driver binds the keys it knows
(bind_keys). The index and the older formats: shard_format.py (pure: numpy, hashlib, json).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.runtime.store.shard_format import BLOCK, KEY_BYTES

# an index's {"nan": {name: [dtype, per-entry shape]}, "codes": {name: [dtype, names]}}
Layout = Mapping[str, Mapping[str, list]]


def pack(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Stacked arrays (n, ...) as format 4 stores them, and their layout: an array whose every
    value has the bytes of NaN (rw's alpha) is left out, named in layout["nan"]; a str array
    is stored as codes into its sorted distinct values, layout["codes"] (read back as wide as
    its longest value: what `astype(str)` of the values as objects gives)."""
    stored: dict[str, np.ndarray] = {}
    layout: dict[str, dict] = {"nan": {}, "codes": {}}
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        if a.dtype.kind == "f" and a.size and _all_nan(a):
            layout["nan"][name] = [a.dtype.str, list(a.shape[1:])]
        elif a.dtype.kind == "U":
            names, codes = np.unique(a.reshape(-1), return_inverse=True)
            kind = np.uint8 if names.size <= 256 else np.uint16 if names.size <= 65536 else np.int64
            stored[name] = codes.astype(kind).reshape(a.shape)
            # as wide as its longest value (numpy's str of these values), however wide `a` is
            wide = int(np.char.str_len(names).max()) if names.size else 1
            layout["codes"][name] = [f"<U{max(wide, 1)}", names.tolist()]
        else:
            stored[name] = a
    return stored, layout


def unpack(
    stored: Mapping[str, np.ndarray], n: int, layout: Layout, *, nan_views: bool = False
) -> dict[str, np.ndarray]:
    """The arrays `pack` packed, from its stored arrays (n entries) and layout: all-NaN
    arrays made again, codes looked up in their tables (a code out of its table, which only
    a damaged shard holds, leaves its array out: its entries do not check). `nan_views`: an
    all-NaN array as a read-only view of one entry repeated, no memory per entry (train's
    driver keeps rw's alpha of every fit: 24 B per fit made again otherwise)."""
    out = {nm: a for nm, a in stored.items() if nm not in layout.get("codes", {})}
    for name, (dtype, shape) in layout.get("nan", {}).items():
        if nan_views:
            one = np.full(shape, np.nan, dtype=np.dtype(dtype))
            out[name] = np.broadcast_to(one, (n, *shape))
        else:
            out[name] = np.full((n, *shape), np.nan, dtype=np.dtype(dtype))
    for name, (dtype, names) in layout.get("codes", {}).items():
        codes = stored.get(name)
        if (
            codes is None
            or codes.dtype.kind not in "iu"
            or (codes.size and (int(codes.min()) < 0 or int(codes.max()) >= len(names)))
        ):
            continue
        out[name] = np.asarray(names, dtype=np.dtype(dtype))[codes]
    return out


def _all_nan(a: np.ndarray) -> bool:
    """Whether every value of float array `a` has the bytes of np.nan (so that np.full makes
    the same bytes again)."""
    one = np.full(1, np.nan, dtype=a.dtype).view(np.uint8)
    return bool((a.reshape(-1).view(np.uint8).reshape(-1, one.size) == one).all())


def array_digests(
    stored: Mapping[str, np.ndarray],
    own: Sequence[Mapping[str, np.ndarray]] | None,
    n: int,
    block: int,
    layout: Layout | None = None,
) -> bytes:
    """Format 4: one 32-byte sha256 per block of entries, concatenated, over every stacked
    array (sorted by name: its header, with its `nan` or `codes` form, then the block's rows
    as stored) and each entry's own arrays: block_sums without the keys."""
    layout = layout or {}
    nan, coded = layout.get("nan", {}), layout.get("codes", {})
    rows = []
    for name in sorted({*stored, *nan}):
        if name in nan:
            dtype, shape = nan[name]
            rows.append((f"{name}|nan|{dtype}|{tuple(shape)}|".encode(), None))
            continue
        a = np.ascontiguousarray(stored[name])
        header = f"{name}|{a.dtype.str}|{a.shape[1:]}|"
        if name in coded:  # the table as a digest: one header per block, whatever its size
            table = hashlib.sha256(json.dumps(coded[name]).encode()).hexdigest()
            header = f"{name}|codes|{table}|{a.dtype.str}|{a.shape[1:]}|"
        flat = a.reshape(n, -1).view(np.uint8) if a.size else np.zeros((n, 0), np.uint8)
        rows.append((header.encode(), flat))
    out = bytearray()
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        digest = hashlib.sha256()
        for header, flat in rows:
            digest.update(header)
            if flat is not None:
                digest.update(flat[lo:hi])
        for i in range(lo, hi) if own else ():
            for name in sorted(own[i]):
                a = np.ascontiguousarray(own[i][name])
                digest.update(f"{i}/{name}|{a.dtype.str}|{a.shape}|".encode())
                digest.update(a.tobytes())
        out += digest.digest()
    return bytes(out)


def bind_keys(keys: bytes | memoryview, digests: bytes, block: int) -> list[str]:
    """Format 4's block checksums: sha256(the block's raw key bytes + its arrays' digest), hex.
    The driver makes them for a worker's shard (the keys are its own); a reader compares."""
    raw = memoryview(keys).cast("B")
    sums = []
    for i in range(len(digests) // 32):
        digest = hashlib.sha256(raw[i * block * KEY_BYTES : (i + 1) * block * KEY_BYTES])
        digest.update(digests[32 * i : 32 * i + 32])
        sums.append(digest.hexdigest())
    return sums


def encode_arrays(arrays: Mapping[str, np.ndarray], block: int = BLOCK) -> dict[str, object]:
    """A shard of entries whose arrays stack (each (n, ...)), encoded without its keys: plain
    data, {"npz": np.savez of the packed arrays, "names": the arrays, "digests": array_digests,
    "layout": pack's}. A worker makes it for its task's fits (worker.shard_bytes);
    FitCache.write_encoded binds the keys and writes it."""
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) > 1:
        raise ValueError(f"arrays of {sorted(sizes)} entries in one shard")
    n = sizes.pop() if sizes else 0
    stored, layout = pack(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    digests = array_digests(stored, None, n, block, layout)
    return {"npz": buffer.getvalue(), "names": list(arrays), "digests": digests, "layout": layout}
