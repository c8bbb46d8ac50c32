"""A fit-cache shard's index file as tests read and edit it (formats 3 and 4: a JSON line, then
the content keys as raw 32-byte digests; pipeline/runtime/store/shard_format.py), and shards
written as the previous qpipe wrote them (format 3: every array stored, checksums over keys
and arrays together) to test that an old cache is read as it is."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime.store.shard_format import block_sums, key_text


def index_path(npz: Path) -> Path:
    """The index file of the shard whose arrays are `npz` (formats 3 and 4: `.idx`)."""
    return npz.with_suffix(".idx")


def read_head(path: Path) -> tuple[dict[str, Any], bytes]:
    """A format 3 or 4 index file's JSON line as a dict, and the raw keys after it."""
    head, _, keys = path.read_bytes().partition(b"\n")
    return json.loads(head), keys


def write_head(path: Path, head: dict[str, Any], keys: bytes) -> None:
    """Write a format 3 or 4 index file of `head` (e.g. with a checksum changed) and `keys`."""
    path.write_bytes(json.dumps(head, sort_keys=True).encode() + b"\n" + keys)


def encode_format_3(
    keys: Any, arrays: dict[str, np.ndarray], block: int
) -> tuple[bytes, list[str]]:
    """A shard as formats 2 and 3 encoded it: np.savez of every array as it is, and one
    sha256 per block over its keys (raw bytes, or a list's JSON) and its rows (block_sums)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    raw = np.ascontiguousarray(keys).tobytes() if isinstance(keys, np.ndarray) else key_text(keys)
    return buffer.getvalue(), block_sums(raw, arrays, None, len(keys), block)


def write_format_3(
    shards: Path, name: str, keys: np.ndarray, arrays: dict[str, np.ndarray], block: int
) -> Path:
    """A shard of content keys ((n,) S32) as the previous qpipe wrote it: `<name>.npz` and
    `<name>.idx`, format 3's JSON line (no `nan`, no `codes`) then the raw keys."""
    npz, sums = encode_format_3(keys, arrays, block)
    head = {
        "block": block,
        "format": 3,
        "n": len(keys),
        "own": [],
        "stacked": sorted(arrays),
        "sums": sums,
    }
    shards.mkdir(parents=True, exist_ok=True)
    path = shards / f"{name}.npz"
    path.write_bytes(npz)
    write_head(index_path(path), head, np.ascontiguousarray(keys).tobytes())
    return path
