"""One fit-cache shard's format on disk: its index and checksums (pure: numpy, hashlib, json).

Format 4 (since issue 18's item 7 at 1M) is format 3 with fewer bytes per entry. A stacked
array whose every value is the same NaN (rw's alpha: 24 bytes per fit) is not stored: the
index's `nan` names it, {name: [dtype, per-entry shape]}. A stacked str array (the fits'
countries: 16 bytes per fit at 4 characters) is stored as integer codes into a table the
index's `codes` holds, {name: [dtype, names]}. And a block's checksum is
sha256(its key bytes + its arrays' digest), where the digest (sha256 over the block's rows
of every array as stored, each array's header naming its `nan` or `codes` form and table) is
made without the keys: a worker makes the digests of its task's shard and the driver,
which knows the keys, binds them (bind_keys), so a task's payload needs no keys.

Format 3 (since issue 18's scale-out, third pass). `<name>.npz` holds each array name stacked
over the shard's entries, (n, ...), where every entry's array has the same dtype and shape, and
`<i>/<name>` for entry i's array that does not stack (a ragged fitted state). `<name>.idx`, the
index, is one JSON line (`stacked`, `own`: each entry's unstacked names, [] when none, `block`,
`sums`, `n`, `format`) followed by the entries' content keys as raw 32-byte digests, n x 32
bytes. `sums` holds one sha256 per block of `block` consecutive entries over the block's key
bytes and its rows of every array, contiguous byte ranges, so writing or checking a task's
65,536 fits costs a few hundred hashlib calls, not one per fit. A damaged entry therefore
refits its whole block (1,024 fits by default), not only itself.

Format 2 wrote the same index as `<name>.json`, all JSON, its content keys as one hex string
(twice the bytes, and a hex conversion each way: ~5 ms per 65,536-fit shard written, as much
read); shards of keys that are not content keys (tests' plain names) are still written in it,
their `keys` a list of str. Formats 1 (one sha256 per entry, one JSON object per entry) and 2
are still read: a cache of older shards is used as it is, not refit; as are format 3's, whose
checksum is one sha256 over the block's keys and rows (block_sums).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

FORMAT = 4
READS = (1, 2, 3, 4)
# the index file of each format: 4 (3 before it) for content keys, 2 for any other keys
SUFFIX = {4: ".idx", 3: ".idx", 2: ".json"}
BLOCK = 1024  # entries per checksum
KEY_BYTES = 32


@dataclass
class Index:
    """A shard's index, either format: keys, names, and the checksums to compare."""

    format: int
    n: int
    stacked: list[str]
    own: list[list[str]]  # per entry; [] when no entry has arrays of its own (format 2)
    block: int  # entries per checksum (1 in format 1)
    sums: list[str]
    key_bytes: bytes  # format 2 with content keys: the raw digests, what the checksums cover
    listed: list[str] | None = None  # keys stored as a list (format 1, keys of tests)
    # format 4: stacked arrays not stored, all NaN ({name: [dtype, shape]}), and stored as
    # codes into a table ({name: [dtype, names]})
    nan: dict[str, list] = field(default_factory=dict)
    codes: dict[str, list] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """The keys as str (64-hex content keys): made on each call, a str per entry."""
        if self.listed is not None:
            return self.listed
        text, width = self.key_bytes.hex(), 2 * KEY_BYTES
        return [text[i : i + width] for i in range(0, len(text), width)]

    def raw_keys(self) -> np.ndarray | None:
        """(n,) S32: the keys as raw digests, no object per key; None when some key is not a
        content key (listed keys that are not 64 lowercase hex characters each)."""
        if self.listed is None:
            return np.frombuffer(self.key_bytes, dtype=f"S{KEY_BYTES}")
        text = "".join(self.listed)
        if any(len(k) != 2 * KEY_BYTES for k in self.listed):
            return None
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return None
        return np.frombuffer(raw, dtype=f"S{KEY_BYTES}") if raw.hex() == text else None


def parse_index(data: str | bytes) -> Index:
    """The index of any format read (a file's bytes, or format 1 or 2 as text); ValueError
    (KeyError, TypeError, UnicodeDecodeError) when it is not one."""
    raw = data.encode() if isinstance(data, str) else data
    head, _, tail = raw.partition(b"\n")  # formats 3, 4: its JSON line, then the raw keys
    index = json.loads(head)
    fmt = index.get("format")
    if fmt not in (3, 4):  # formats 1 and 2: a JSON line alone
        if tail.strip():
            raise ValueError("data after a shard index")
        return _parse_json_index(index)
    n, block = int(index["n"]), int(index["block"])
    if len(tail) != n * KEY_BYTES:
        raise ValueError("keys do not match n")
    own, sums = index["own"] or [], list(index["sums"])
    nan, codes = _layout(index) if fmt == 4 else ({}, {})
    stacked = list(index["stacked"])
    if not set(nan).union(codes) <= set(stacked) or set(nan) & set(codes):
        raise ValueError("inconsistent shard index")
    return _checked(Index(fmt, n, stacked, own, block, sums, tail, None, nan, codes))


def _layout(index: dict) -> tuple[dict[str, list], dict[str, list]]:
    """Format 4's `nan` ({name: [dtype, shape]}) and `codes` ({name: [dtype, names]})."""
    nan = {str(k): [str(d), [int(x) for x in shape]] for k, (d, shape) in index["nan"].items()}
    codes = {str(k): [str(d), [str(x) for x in names]] for k, (d, names) in index["codes"].items()}
    return nan, codes


def _parse_json_index(index: dict) -> Index:
    """Formats 1 and 2 (all JSON)."""
    fmt = index.get("format")
    if fmt == 1:
        entries = index["entries"]
        if not isinstance(entries, list):
            raise ValueError("not a shard index")
        return Index(
            1,
            len(entries),
            list(index["stacked"]),
            [list(e["own"]) for e in entries],
            1,
            [e["sha256"] for e in entries],
            b"",
            [e["key"] for e in entries],
        )
    if fmt != 2:
        raise ValueError(f"shard format {fmt!r}")
    n, block, keys = int(index["n"]), int(index["block"]), index["keys"]
    listed = None
    if isinstance(keys, str):
        key_bytes = bytes.fromhex(keys)
        if len(key_bytes) != n * KEY_BYTES:
            raise ValueError("keys do not match n")
    else:
        listed, key_bytes = [str(k) for k in keys], b""
        if len(listed) != n:
            raise ValueError("keys do not match n")
    own = index["own"] or []
    sums = list(index["sums"])
    return _checked(Index(2, n, list(index["stacked"]), own, block, sums, key_bytes, listed))


def _checked(index: Index) -> Index:
    """`index` when its parts agree (entries, blocks, checksums); else ValueError."""
    if (index.own and len(index.own) != index.n) or index.block < 1:
        raise ValueError("inconsistent shard index")
    if len(index.sums) != -(-index.n // index.block):
        raise ValueError("inconsistent shard index")
    return index


def key_text(keys: Sequence[str] | np.ndarray) -> str | list[str]:
    """The index's `keys`: raw digests ((n, 32) uint8 or (n,) S32) as one hex string; str keys
    that are all such digests' lowercase hex likewise; any other keys as a list."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "uS":
        return np.ascontiguousarray(keys).tobytes().hex()
    listed = [str(k) for k in keys]
    text = "".join(listed)
    if len(text) == 2 * KEY_BYTES * len(listed) and all(len(k) == 2 * KEY_BYTES for k in listed):
        try:
            if bytes.fromhex(text).hex() == text:
                return text
        except ValueError:
            pass
    return listed


def block_sums(
    keys: str | list[str] | bytes,
    stacked: Mapping[str, np.ndarray],
    own: Sequence[Mapping[str, np.ndarray]] | None,
    n: int,
    block: int = BLOCK,
) -> list[str]:
    """sha256 per block of entries: the block's keys (raw bytes, or a list's JSON), then per
    stacked name (sorted) its header and the block's rows, then each entry's own arrays.
    `keys`: key_text's (a hex str or a list), or the raw digests as bytes."""
    raw = (
        bytes.fromhex(keys) if isinstance(keys, str) else keys if isinstance(keys, bytes) else None
    )
    rows = {}
    for name in sorted(stacked):
        a = np.ascontiguousarray(stacked[name])
        header = f"{name}|{a.dtype.str}|{a.shape[1:]}|".encode()
        flat = a.reshape(n, -1).view(np.uint8) if a.size else np.zeros((n, 0), np.uint8)
        rows[name] = (header, flat)
    sums = []
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        digest = hashlib.sha256(
            raw[lo * KEY_BYTES : hi * KEY_BYTES]  # type: ignore[index]
            if raw is not None
            else json.dumps(keys[lo:hi]).encode()  # type: ignore[index]
        )
        for header, flat in rows.values():
            digest.update(header)
            digest.update(flat[lo:hi])
        for i in range(lo, hi) if own is not None else ():
            for name in sorted(own[i]):
                a = np.ascontiguousarray(own[i][name])
                digest.update(f"{i}/{name}|{a.dtype.str}|{a.shape}|".encode())
                digest.update(a.tobytes())
        sums.append(digest.hexdigest())
    return sums


def index_text(
    keys: str | list[str],
    stacked: Sequence[str],
    own: Sequence[Sequence[str]] | None,
    sums: Sequence[str],
    n: int,
    block: int = BLOCK,
) -> str:
    """Format 2's index as json.dumps(..., sort_keys=True) writes it, plus a newline. A hex string
    of keys (megabytes: 64 characters per entry) is spliced in, not run through the encoder:
    hex needs no escaping, and `"keys": ""` can only be the key itself (json escapes quotes
    inside strings)."""
    index = {
        "block": block,
        "format": 2,
        "keys": keys if isinstance(keys, list) else "",
        "n": n,
        "own": [sorted(o) for o in own] if own is not None and any(own) else [],
        "stacked": sorted(stacked),
        "sums": list(sums),
    }
    text = json.dumps(index, sort_keys=True) + "\n"
    if isinstance(keys, str):
        text = text.replace('"keys": ""', f'"keys": "{keys}"', 1)
    return text


def index_file(
    keys: Sequence[str] | np.ndarray,
    stacked: Sequence[str],
    own: Sequence[Sequence[str]] | None,
    sums: Sequence[str],
    block: int = BLOCK,
    layout: Mapping[str, Mapping[str, list]] | None = None,
) -> tuple[str, list[bytes | memoryview]]:
    """A shard's index file as (suffix, its bytes in parts, to write one after the other):
    format 4 for content keys (the raw digests, (n, 32) uint8 or (n,) S32, or their 64-hex
    str; `sums` from bind_keys, `layout` encode's {"nan": ..., "codes": ...}), format 2
    (index_text; `sums` from block_sums) for other keys. The raw digests are a part as they
    are (a view: a 131,072-fit shard's 4 MB of keys are not copied twice to join them to the
    head)."""
    n = len(keys)
    raw = raw_key_bytes(keys)
    if raw is None:  # not content keys: listed in format 2's JSON
        text = key_text(keys)
        return SUFFIX[2], [index_text(text, stacked, own, sums, n, block).encode()]
    if len(raw) != n * KEY_BYTES:
        raise ValueError(f"{len(raw)} key bytes for {n} entries")
    layout = layout or {}
    head = {
        "block": block,
        "codes": dict(layout.get("codes", {})),
        "format": FORMAT,
        "n": n,
        "nan": dict(layout.get("nan", {})),
        "own": [sorted(o) for o in own] if own is not None and any(own) else [],
        "stacked": sorted(stacked),
        "sums": list(sums),
    }
    return SUFFIX[FORMAT], [json.dumps(head, sort_keys=True).encode() + b"\n", raw]


def raw_key_bytes(keys: Sequence[str] | np.ndarray) -> bytes | memoryview | None:
    """Content keys' raw digests as one buffer (a view of an (n, 32) uint8 or (n,) S32
    array); None when the keys are not content keys (then format 2 lists them)."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "uS":
        return memoryview(np.ascontiguousarray(keys).reshape(-1).view(np.uint8))
    text = key_text(keys)
    return bytes.fromhex(text) if isinstance(text, str) else None


def stored_arrays(npz: bytes, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays `names` of an .npz held in memory whose members are stored uncompressed (what
    shard_pack.encode_arrays makes), as read-only views of its bytes: np.load copies each member out
    of the zip (a worker's result, read by the serial driver). Raises ValueError for a member
    that is missing, compressed, or not a plain numeric array."""
    import struct
    import zipfile

    from numpy.lib import format as npy

    out = {}
    with zipfile.ZipFile(io.BytesIO(npz)) as archive:  # BytesIO of bytes: no copy
        for name in names:
            try:
                info = archive.getinfo(f"{name}.npy")
            except KeyError:
                raise ValueError(f"no array {name!r} in the npz") from None
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"array {name!r} is compressed")
            # the member's data follows its local header (30 bytes, its name, its extra field)
            at = info.header_offset
            name_len, extra_len = struct.unpack("<HH", npz[at + 26 : at + 30])
            start = at + 30 + name_len + extra_len
            head = io.BytesIO(npz[start : start + min(info.file_size, 1 << 16)])
            version = npy.read_magic(head)  # np.savez writes 1.0 (2.0: a header over 64 KiB)
            read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"array {name!r}: .npy format {version}")
            shape, fortran, dtype = read[version](head)
            if dtype.hasobject:
                raise ValueError(f"array {name!r} holds objects")
            count = int(np.prod(shape, dtype=np.int64))
            if head.tell() + count * dtype.itemsize != info.file_size:
                raise ValueError(f"array {name!r}: {info.file_size} bytes for {shape} {dtype}")
            flat = np.frombuffer(npz, dtype=dtype, count=count, offset=start + head.tell())
            out[name] = flat.reshape(shape, order="F" if fortran else "C")
    return out


def entry_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """Format 1's per-entry sha256: array names, dtypes, shapes and bytes (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()
