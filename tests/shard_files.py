"""A fit-cache shard's index file as tests read and edit it (format 3: a JSON line, then the
content keys as raw 32-byte digests; pipeline/runtime/store/shard_format.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def index_path(npz: Path) -> Path:
    """The index file of the shard whose arrays are `npz` (format 3's `.idx`)."""
    return npz.with_suffix(".idx")


def read_head(path: Path) -> tuple[dict[str, Any], bytes]:
    """A format 3 index file's JSON line as a dict, and the raw keys after it."""
    head, _, keys = path.read_bytes().partition(b"\n")
    return json.loads(head), keys


def write_head(path: Path, head: dict[str, Any], keys: bytes) -> None:
    """Write a format 3 index file of `head` (e.g. with a checksum changed) and `keys`."""
    path.write_bytes(json.dumps(head, sort_keys=True).encode() + b"\n" + keys)
