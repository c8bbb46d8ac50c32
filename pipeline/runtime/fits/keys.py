"""Content keys of fits (pure: numpy and hashlib; DESIGN.md "Task model"), made in bulk.

A fit's key is one sha256 over its group's settings (key_prefix: model, adapter version,
parameters, quantiles, horizon, seed) and the fit's own raw bytes (country, origin, batch slot
or block, and the window values it reads). Keys are held as raw 32-byte digests ((F,) S32);
their 64-character hex is what a person, a log line or the progress export sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.io import stable_hash

# Version of the key definition itself (bumped when the bytes a key hashes change; every
# cached fit then refits once). 2: one sha256 per fit over the fit's raw bytes (issue 18).
KEY_FORMAT = 2
KEY_BYTES = 32  # a content key's sha256 digest; 64 hex characters as a str


def key_prefix(
    model: str,
    version: int,
    params: Mapping[str, Any],
    quantiles: Sequence[float],
    horizon: int | Sequence[int],
    seed: int,
    extra: str = "",
) -> bytes:
    """The bytes every key of one group hashes first (what its fits share)."""
    payload = {
        "format": KEY_FORMAT,
        "model": model,
        "version": int(version),
        "params": dict(params),
        "quantiles": [float(q) for q in quantiles],
        "horizon": int(horizon) if np.isscalar(horizon) else [int(h) for h in horizon],
        "seed": int(seed),
        "extra": extra,
    }
    return stable_hash(payload, length=64).encode()


def _row_bytes(array: np.ndarray, n: int) -> np.ndarray:
    """(n, B) uint8 view of an array's per-fit values (NaN canonicalised, bool as one byte)."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.where(np.isnan(a), np.nan, a).astype("<f8")
    elif a.dtype.kind in "iu":
        a = a.astype("<i8")
    return np.ascontiguousarray(a).reshape(n, -1).view(np.uint8)


def raw_keys(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """(F, KEY_BYTES) uint8 from 64-hex-character content keys (what bulk_keys makes)."""
    if not len(keys):
        return np.zeros((0, KEY_BYTES), dtype=np.uint8)
    listed = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    try:
        text = "".join(listed)
    except TypeError:  # not every key a str
        text = "".join(map(str, listed))
    raw = bytes.fromhex(text)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(keys), KEY_BYTES)


def hex_keys(raw: np.ndarray) -> np.ndarray:
    """The content keys (object array of str) of raw_keys' rows (or of an (F,) S32 array)."""
    text = np.ascontiguousarray(raw).tobytes().hex()
    width = 2 * KEY_BYTES
    return np.array([text[i : i + width] for i in range(0, len(text), width)], dtype=object)


def bulk_keys(prefix: bytes, *parts: np.ndarray) -> np.ndarray:
    """Content keys (F,) S32, raw digests: sha256(prefix, then each fit's bytes of `parts`).

    One hashlib call per fit over one contiguous row that starts with the prefix (the same
    digest as hashing the prefix once and copying that state per fit, without the copy and
    the update call: the per-fit Python cost is one slice, one call and a digest)."""
    n = int(parts[0].shape[0])
    if not n:
        return np.empty(0, dtype=f"S{KEY_BYTES}")
    head = np.broadcast_to(np.frombuffer(prefix, dtype=np.uint8), (n, len(prefix)))
    rows = np.ascontiguousarray(np.concatenate([head, *(_row_bytes(p, n) for p in parts)], axis=1))
    width, flat, sha256 = rows.shape[1], memoryview(rows.reshape(-1)), hashlib.sha256
    raw = b"".join([sha256(flat[i : i + width]).digest() for i in range(0, n * width, width)])
    return np.frombuffer(raw, dtype=f"S{KEY_BYTES}")


def country_digests(countries: Sequence[str]) -> np.ndarray:
    """(C, 16) uint8: a fixed-width digest per country code (so a key does not depend on the
    longest code of the study)."""
    blob = b"".join(hashlib.sha256(str(c).encode()).digest()[:16] for c in countries)
    return np.frombuffer(blob, dtype=np.uint8).reshape(len(countries), 16)
