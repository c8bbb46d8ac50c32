"""numpy arrays to and from Arrow arrays through their buffers, without pyarrow's pandas shim.

pyarrow imports pandas (0.22 CPU-s) the first time `pa.array`, `pa.table`, `pa.scalar` or
`to_numpy` runs, to check whether it was handed a pandas object. The probe and train stage
processes use no pandas otherwise, so what they read of the panel and write of their tables
goes through these instead: the same values and types as `to_numpy()` and
`pa.array(values, from_pandas=True)` give (NaN and NaT as null where those make nulls).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_NAT = np.iinfo(np.int64).min


def to_numpy(column: Any) -> np.ndarray:
    """A primitive (number, bool-free) or timestamp Arrow Array or ChunkedArray as numpy, as
    `to_numpy()` gives it: floats with NaN where null, timestamps as datetime64 with NaT."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    kind = column.type
    if pa.types.is_timestamp(kind):
        dtype = np.dtype(f"datetime64[{kind.unit}]")
        storage = np.dtype(np.int64)
    else:
        dtype = storage = np.dtype(kind.to_pandas_dtype())
    if dtype.kind not in "iufM":
        raise TypeError(f"to_numpy: no buffer read of Arrow type {kind}")
    parts = []
    for chunk in chunks:
        n = len(chunk)
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=storage, count=n, offset=chunk.offset * storage.itemsize)
        if chunk.null_count:
            null = ~_bits(validity, chunk.offset, n)
            if dtype.kind == "M":
                values = np.where(null, _NAT, values)
            else:  # as to_numpy: a number column with nulls is float64 with NaN
                values = np.where(null, np.nan, values.astype(np.float64))
        parts.append(values)
    if not parts:
        return np.zeros(0, dtype=dtype)
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out.view(dtype) if dtype.kind == "M" else out


def _bits(buffer: Any, offset: int, n: int) -> np.ndarray:
    """(n,) bool of an Arrow bitmap from bit `offset`."""
    raw = np.frombuffer(buffer, dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little", count=offset + n)[offset:].astype(bool)


def from_numpy(values: np.ndarray, kind: Any = None, nan_is_null: bool = False) -> Any:
    """An Arrow array of a numeric or datetime64 numpy array (`kind`: its Arrow type, by default
    the array's own), as `pa.array(values, kind, from_pandas=nan_is_null)`: NaT always null,
    NaN null with `nan_is_null`."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if kind is None:
        kind = pa.from_numpy_dtype(values.dtype)
    if values.dtype.kind == "M":
        null = np.isnat(values)
        values = values.view(np.int64)
    else:
        null = np.isnan(values) if nan_is_null and values.dtype.kind == "f" else None
    validity, count = None, 0
    if null is not None and null.any():
        count = int(null.sum())
        validity = pa.py_buffer(np.packbits(~null, bitorder="little"))
    return pa.Array.from_buffers(kind, values.size, [validity, pa.py_buffer(values)], count)


def strings(values: Sequence[str | None], large: bool = False) -> Any:
    """An Arrow string (large_string) array of Python strings (None as null)."""
    import pyarrow as pa

    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64 if large else np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    null = np.array([v is None for v in values], dtype=bool)
    validity, count = None, int(null.sum())
    if count:
        validity = pa.py_buffer(np.packbits(~null, bitorder="little"))
    kind = pa.large_string() if large else pa.string()
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(kind, len(encoded), buffers, count)


def nulls(n: int) -> Any:
    """An Arrow array of `n` nulls (type null)."""
    import pyarrow as pa

    return pa.nulls(n)


def empty_table(schema: Any) -> Any:
    """A table of no rows of `schema` (of number, timestamp and string columns), as
    `schema.empty_table()` makes it."""
    import pyarrow as pa

    def empty(kind: Any) -> Any:
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return strings([], large=pa.types.is_large_string(kind))
        if pa.types.is_timestamp(kind):
            return from_numpy(np.zeros(0, dtype=f"datetime64[{kind.unit}]"), kind)
        return from_numpy(np.zeros(0, dtype=kind.to_pandas_dtype()), kind)

    return pa.Table.from_arrays([empty(field.type) for field in schema], schema=schema)
