"""Read a CSV or parquet data file, or turn its failure into one DataError naming file and fix.

CSV cells are read as text (only an empty cell is missing): whether `n/a` or `1,5` is a number
is `pipeline.data.values`' decision, made with the column and country in hand, not pandas'
silent guess.

A data file may be hostile (a device, a FIFO, a huge or binary file): `check_source` accepts
only a regular file or a directory, and text is read through a guarded stream that stops at
data.max_file_mb (also after decompression), at a NUL byte and at an absurdly long line, in
chunks that `ReadLimits.check` validates as they arrive. A bad file fails within its first
chunk; memory stays bounded by the size limit.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.errors import DataError

if TYPE_CHECKING:  # imported by the readers: check_source (every run's start) needs no pandas
    import pandas as pd

CHUNK_ROWS = 50_000
MAX_LINE_BYTES = 1 << 20  # no line of a monthly panel comes near 1 MiB
SNIFF_BYTES = 64 << 10  # what a layout sniffer may read
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ReadLimits:
    """How much of a data file may be read, and the check each chunk of rows must pass."""

    max_bytes: int | None = None  # data.max_file_mb: on disk and after decompression
    check: Callable[[pd.DataFrame], None] | None = None


NO_LIMITS = ReadLimits()


def check_source(path: Path, limits: ReadLimits = NO_LIMITS, key: str = "data.path") -> None:
    """Raise DataError unless `path` is a regular file (within the size limit) or a directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # each source says what it expected there
    except OSError as error:
        raise DataError(f"{key} {path} cannot be read ({error.strerror}); check it") from None
    if stat.S_ISDIR(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise DataError(
            f"{key} {path} is {kind}, not a data file; point {key} at a CSV, parquet or TSV "
            "file, or at a directory of per-country files"
        )
    if limits.max_bytes is not None and st.st_size > limits.max_bytes:
        raise DataError(_too_big(path, st.st_size, limits.max_bytes))


_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def _too_big(path: Path, size: int, limit: int) -> str:
    return (
        f"{path} holds more than data.max_file_mb={limit / 2**20:g} MB ({size / 2**20:,.0f} MB "
        "read so far or on disk); check it is the right file, or raise data.max_file_mb"
    )


class _Guard(io.RawIOBase):
    """A byte stream that raises DataError past `max_bytes`, at a NUL byte or a huge line."""

    def __init__(self, raw: io.BufferedIOBase, path: Path, max_bytes: int | None) -> None:
        self.raw, self.path, self.max_bytes = raw, path, max_bytes
        self.total = self.line = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        view = memoryview(buffer)[: min(len(buffer), _BLOCK)]
        n = self.raw.readinto(view)
        if not n:
            return 0
        block = bytes(view[:n])
        self.total += n
        if self.max_bytes is not None and self.total > self.max_bytes:
            raise DataError(_too_big(self.path, self.total, self.max_bytes))
        if b"\0" in block:
            raise DataError(
                f"{self.path} holds binary data (NUL bytes near byte {self.total - n:,}), not "
                "UTF-8 text; point data.path at the CSV or TSV file itself (a UTF-16 export: "
                "save it as UTF-8)"
            )
        last = block.rfind(b"\n")
        self.line = self.line + n if last < 0 else n - last - 1
        if self.line > MAX_LINE_BYTES:
            raise DataError(
                f"{self.path} has a line longer than {MAX_LINE_BYTES // 2**20} MiB near byte "
                f"{self.total:,}; it is not a data table (or its line ends are lost)"
            )
        return n


@contextmanager
def open_guarded(path: Path, limits: ReadLimits = NO_LIMITS) -> Iterator[io.BufferedReader]:
    """The file's bytes (gunzipped when it starts with the gzip magic), through the guard."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        inner: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
        yield io.BufferedReader(_Guard(inner, path, limits.max_bytes), buffer_size=_BLOCK)


def read_prefix(path: Path, size: int = SNIFF_BYTES) -> bytes:
    """At most `size` bytes of the (decompressed) file, for sniffing its layout."""
    try:
        with open_guarded(path) as stream:
            return stream.read(size)
    except (EOFError, gzip.BadGzipFile, zlib.error, DataError):
        return b""  # the reader proper names the problem


def read_csv_text(path: Path, limits: ReadLimits = NO_LIMITS) -> pd.DataFrame:
    """Every cell as a string; an empty cell is missing. Compressed files (.gz) are read as is."""
    import pandas as pd

    check_source(path, limits)
    _refuse_other_separator(path)
    chunks = []
    try:
        with open_guarded(path, limits) as stream:
            reader = pd.read_csv(
                stream, dtype=str, keep_default_na=False, na_values=[""], chunksize=CHUNK_ROWS
            )
            for chunk in reader:
                if not isinstance(chunk.index, pd.RangeIndex):
                    # pandas takes the first column as an index when the first data row has a
                    # field more than the header (`2000-01,DE,1,5`): every column would shift
                    raise DataError(
                        _extra_fields(path, *_first_long_line(path, len(chunk.columns)))
                    )
                if limits.check is not None and not chunk.empty:
                    limits.check(chunk)
                chunks.append(chunk)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path} is empty (no header, no rows); point data.path at a CSV with a header "
            "line (TIME, COUNTRY, value columns) and data rows"
        ) from None
    except pd.errors.ParserError as error:
        # the C parser's "Expected 3 fields in line 7, saw 4" (lines counted from the header's)
        counts = _FIELD_COUNTS.search(str(error))
        if counts is None:
            raise DataError(_unreadable(path, error)) from None
        expected, line, saw = (int(n) for n in counts.groups())
        raise DataError(_extra_fields(path, line, saw, expected)) from None
    except UnicodeDecodeError as error:
        raise DataError(_unreadable(path, error)) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(
            f"{path} is a truncated or corrupt compressed file ({_first_line(error)}); "
            "copy or download it again"
        ) from None
    if not chunks:
        raise DataError(f"{path} has no header and no rows; point data.path at the full file")
    frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    return _require_rows(frame, path)


def _refuse_other_separator(path: Path) -> None:
    """A header with no comma but semicolons (or tabs) between its names: a European Excel
    export (or a TSV). Refused, not read: such a file writes its numbers with the locale's
    marks (`1,5`, often `1.234,5`), and guessing them per file could shift a value by 1000
    without a word; the product never guesses a number's format (pipeline.data.values)."""
    # 4 KiB: a folder of per-country files reads each one's head once more, not the file
    header = read_prefix(path, 4096).split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf")
    if b"," in header:
        return
    for mark, name, read in (
        (b";", "semicolons (;), not commas (a European Excel export?)", "sep=';', decimal=','"),
        (b"\t", "tabs, not commas", "sep='\\t'"),
    ):
        if mark in header:
            raise DataError(
                f"{path} separates its fields with {name}; save it as CSV with commas and "
                "decimal points, e.g. "
                f"pd.read_csv(path, {read}).to_csv('panel.csv', index=False)"
            )


def read_parquet_file(path: Path, limits: ReadLimits = NO_LIMITS) -> pd.DataFrame:
    import pandas as pd
    import pyarrow as pa

    check_source(path, limits)
    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(
            f"{path} is not a readable parquet file ({_first_line(error)}); it may be truncated: "
            "write it again (e.g. DataFrame.to_parquet) or point data.path at another file"
        ) from None
    return _require_rows(frame, path)


def _require_rows(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if frame.empty:
        raise DataError(
            f"{path} has a header ({', '.join(map(str, frame.columns[:6]))}) but no data rows; "
            "add the rows or point data.path at the full file"
        )
    return frame


_FIELD_COUNTS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _unreadable(path: Path, error: BaseException) -> str:
    return (
        f"{path} is not a readable CSV ({_first_line(error)}); save it as UTF-8 CSV with "
        "one header line and the same number of cells on every row"
    )


def _extra_fields(path: Path, line: int, saw: int, expected: int) -> str:
    return (
        f"{path} line {line} has {saw} fields where the header has {expected} (an extra field: "
        "a decimal comma, as in 1,5?); write decimals with a point (1.5)"
    )


def _first_long_line(path: Path, n_header: int) -> tuple[int, int, int]:
    """(line number, fields, header fields) of the first row with more fields than the header:
    read again only to name it (an error path; the stream is guarded as before)."""
    import csv

    with open_guarded(path) as stream:
        rows = csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline=""))
        for row in rows:
            if rows.line_num > 1 and len(row) > n_header:
                return rows.line_num, len(row), n_header
    return 2, n_header + 1, n_header  # not reached: pandas saw such a row


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
