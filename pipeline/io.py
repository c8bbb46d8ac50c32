"""Atomic, deterministic artifact writes and safe reads. Nothing here executes loaded code."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: a worker's task hashes and writes no frames
    import pandas as pd

_write_guard: list[Callable[[Path], None]] = []


def set_write_guard(
    guard: Callable[[Path], None] | None,
) -> Callable[[Path], None] | None:
    """Install `guard` (called with each atomic write's target before anything is written; it
    may raise to refuse): the run's record of its own files (pipeline.runtime.store.manifest).
    Returns the previous guard."""
    previous = _write_guard[0] if _write_guard else None
    _write_guard[:] = [guard] if guard is not None else []
    return previous


@contextmanager
def atomic_path(target: str | os.PathLike[str], keep_same: bool = False) -> Iterator[Path]:
    """Yield a temp path next to `target`; on success fsync and rename it over `target`.

    A crash at any point leaves either the old file or the new one, never a torn file. With
    `keep_same`, a target that already holds the new bytes is left as it is (its mtime too, so
    what reads it need not run again).
    """
    target = Path(target)
    for guard in _write_guard:
        guard(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    # mkstemp creates 0600; an output is for others too (a web server, a colleague): umask rules
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if keep_same and target.exists():
            import filecmp

            if filecmp.cmp(tmp, target, shallow=False):
                return
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON with sorted keys and a trailing newline (byte-stable for the same payload)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(
    path: str | os.PathLike[str], frame: pd.DataFrame, keep_same: bool = False
) -> None:
    """Write a parquet file deterministically (no pandas index, no timestamps in metadata);
    `keep_same`: leave a file that already holds these bytes untouched (see atomic_path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(None)
    with atomic_path(path, keep_same) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)


def write_parquet_tables(
    path: str | os.PathLike[str],
    schema: Any,
    tables: Iterable[Any],
    keep_same: bool = False,
    options: Mapping[str, Any] | None = None,
) -> None:
    """write_parquet for a table given as consecutive Arrow tables of `schema` (each its own
    row groups), so only one of them need exist at a time. `options`: pyarrow ParquetWriter
    arguments over the defaults (zstd, statistics), e.g. per-column encodings.

    A dictionary field of `schema` (tables that hold the column as a dictionary array of
    its values) is written through its dictionary, not by hashing every row's value, and is
    stored for readers as its value type: the file is the one the plain column gives, byte
    for byte (tests/test_dictionary_write.py), where each table's dictionary holds exactly
    its column's values in order of first appearance (one value, for a constant column)."""
    import pyarrow.parquet as pq

    settings = {"compression": "zstd", "write_statistics": True, **(options or {})}
    stored = _decoded(schema)
    if stored != schema:
        settings["store_schema"] = False  # `stored` instead, added at the end as pyarrow does
    # the writer opens before the first table is made: opened after it (to learn the types
    # from it), train's table phase peaked 20-30 MiB higher at rw 1M
    with (
        atomic_path(path, keep_same) as tmp,
        pq.ParquetWriter(tmp, schema, **settings) as writer,
    ):
        for table in tables:
            writer.write_table(table)
        if stored != schema:
            writer.add_key_value_metadata(_stored_schema(stored))


def _decoded(schema: Any) -> Any:
    """`schema` with each dictionary field as its value type."""
    import pyarrow as pa

    fields = [
        f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


def _stored_schema(schema: Any) -> dict[bytes, bytes]:
    """The key-value metadata pyarrow's ParquetWriter stores for `schema` (store_schema): its
    own metadata, then the Arrow schema itself, serialized and base64-encoded."""
    import base64

    own = {bytes(k): bytes(v) for k, v in (schema.metadata or {}).items()}
    return {**own, b"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes())}


def column_encodings(
    names: Iterable[str],
    plain: Iterable[str] = (),
    uncompressed: Iterable[str] = (),
    statistics: Iterable[str] | None = None,
    codec: str = "zstd",
) -> dict[str, Any]:
    """write_parquet_tables `options` for per-column encodings: `plain` columns without a
    dictionary (where nearly every value differs, pyarrow's attempt at one only costs),
    `uncompressed` ones stored as they are (where zstd saves a few per cent for its CPU),
    min/max `statistics` only on these columns (None: on every column; a reader skips row
    groups by the sort's leading keys, the others' statistics only cost), the others
    compressed with `codec` (a pyarrow compression name)."""
    names, plain, uncompressed = list(names), set(plain), set(uncompressed)
    options: dict[str, Any] = {"use_dictionary": [n for n in names if n not in plain]}
    if uncompressed or codec != "zstd":
        options["compression"] = {n: "none" if n in uncompressed else codec for n in names}
    if statistics is not None:
        options["write_statistics"] = [n for n in names if n in set(statistics)]
    return options


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})


@contextmanager
def open_npz(path: str | os.PathLike[str]) -> Iterator[Any]:
    """An .npz file's arrays (np.load's NpzFile), arrays only: allow_pickle=False, so a
    crafted file cannot run code. The file is opened here, not by np.load, which keeps a file
    it opened itself when the zip is unreadable (a damaged file's descriptor left open)."""
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
        yield data


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an .npz file (open_npz)."""
    with open_npz(path) as data:
        return {k: data[k] for k in data.files}


def stable_hash(payload: Any, length: int = 32) -> str:
    """sha256 of a canonical JSON encoding (sorted keys): the same payload, the same hash."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def hash_array(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}|{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    pandas = sys.modules.get("pandas")  # not imported: the value cannot be a Timestamp
    if pandas is not None and isinstance(value, pandas.Timestamp):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def check_writable_dir(path: str | os.PathLike[str], key: str = "runtime.output_dir") -> None:
    """Raise OutputError unless `path` is (or can be made) a directory this process can write.

    Called before any work starts, so a bad output location fails in one line and nothing of an
    earlier run there is touched. A probe file is created and removed in `path` (or its nearest
    existing parent, so nothing is created for a run that fails later): a full disk fails here.
    """
    import errno

    from pipeline.errors import OutputError

    path = Path(path)
    refuse_system_dir(path, key)
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail with "File exists"
            raise OutputError(
                f"{key} {path}: {existing} is a symlink to {os.readlink(existing)}, which does "
                f"not exist; create that directory, remove the link, or choose another {key}"
            )
        existing = existing.parent  # probe the nearest existing folder: create nothing yet
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(existing))
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=existing)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"{key} {path} cannot be written: {describe_os_error(error, key)}"
        ) from None


# Folders of the operating system: never an output dir, nor anything under the first group
# (a run as root would write forecasts/ and logs/ among system files). /usr/src, /var/lib, /opt,
# /srv, /home/<user> and /tmp/<dir> stay valid (containers and CI run projects there).
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                 "/run", "/sbin", "/sys", "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32",
                 "/usr/lib64", "/usr/libexec", "/usr/sbin", "/usr/share", "/var/log",
                 "/var/spool", "/var/cache", "/var/mail")  # fmt: skip
_SYSTEM_DIRS = ("/", "/usr", "/var", "/opt", "/srv", "/home", "/mnt", "/media", "/tmp",
                "/usr/local", "/var/lib", "/var/tmp", "/snap")  # fmt: skip
_ALLOWED_UNDER_SYSTEM = ("/dev/shm",)  # a RAM disk users pick on purpose


def refuse_system_dir(path: str | os.PathLike[str], key: str = "runtime.output_dir") -> None:
    """Raise OutputError when `path` (symlinks resolved) is `/` or a system directory."""
    from pipeline.errors import OutputError

    real = os.path.realpath(path)
    inside = [t for t in _SYSTEM_TREES if real == t or real.startswith(t + "/")]
    allowed = any(real == a or real.startswith(a + "/") for a in _ALLOWED_UNDER_SYSTEM)
    if real in _SYSTEM_DIRS or (inside and not allowed):
        shown = path if str(path) == real else f"{path} (= {real})"
        raise OutputError(
            f"{key} {shown} is a system directory; a study writes forecasts/, reports/, logs/ "
            f"... there: choose a folder of its own, e.g. {key}=studies/my-study"
        )


def write_failure_message(error: BaseException, output_dir: Path | None = None) -> str | None:
    """The one line for a write the environment refused (a full disk, no permission, a
    read-only or misplaced path), in a file or in the progress store; None for anything else
    (a bug, worth its traceback). The CLI and pipeline.backtest both report these.

    `output_dir`: the run's output dir, named (with its disk's free space) when the disk is
    full and the error itself names no file: a write through an open file or a worker's
    result carries no filename, and "free disk space there" then said nowhere."""
    import errno
    import sqlite3

    if isinstance(error, OSError) and error.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
        errno.EISDIR,
    ):  # fmt: skip
        if error.filename is None and error.errno in (errno.ENOSPC, errno.EDQUOT):
            error.filename = _disk_of(output_dir)
        return f"cannot write: {describe_os_error(error)}"
    if isinstance(error, sqlite3.OperationalError) and (
        getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    ):
        store = Path("progress/progress.sqlite")
        where = f"{output_dir / store}, {_free_space(output_dir)}" if output_dir else store
        return (
            f"cannot write the progress store ({where}): {error}; free disk "
            "space there, or point runtime.output_dir at a disk with room"
        )
    return None


def _disk_of(output_dir: Path | None) -> str | None:
    """'in OUTPUT_DIR, N MiB free on its disk' (None without an output dir)."""
    return f"in {output_dir}, {_free_space(output_dir)}" if output_dir is not None else None


def _free_space(output_dir: Path) -> str:
    import shutil

    try:
        usage = shutil.disk_usage(output_dir)
    except OSError:
        return "its disk unreadable"
    return f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB on its disk"


def describe_os_error(error: OSError, key: str = "runtime.output_dir") -> str:
    """One line for a write failure: the file, the cause and the fix (`key`: the setting or
    argument that chose the path, named in the fix)."""
    import errno

    # a rename onto a directory names the temp file first and the target second
    named = error.filename2 if error.errno == errno.EISDIR and error.filename2 else error.filename
    where = f" ({named})" if named else ""
    if error.errno == errno.EISDIR:
        fix = "a directory is in the way: move it, or name a file path instead"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free disk space there, or point {key} at a disk with room"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = f"a file is in the way: move it, or choose another {key}"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"no permission to write there: choose a writable {key}"
    else:
        fix = f"choose another {key}"
    return f"{error.strerror or error}{where}; {fix}"
