"""shard_format.stored_arrays: a worker's shard npz read in the driver as views of its bytes
equals np.load's copies (dtypes, shapes, Fortran order, empty arrays), and a member it cannot
view (missing, compressed, objects) is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.runtime.store.shard_format import stored_arrays
from pipeline.runtime.store.shard_pack import encode_arrays


def _npz(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def test_views_equal_np_loads_copies() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    arrays = {
        "pred": rng.normal(size=(n, 2, 3, 3)),
        "alpha": np.full((n, 3), np.nan),
        "countries": np.array([f"C{i % 7}" * (1 + i % 3) for i in range(n)]),
        "rows": rng.random((n, 2)) < 0.5,
        "state_f": np.asfortranarray(rng.normal(size=(n, 4)).astype(np.float32)),
        "empty": np.zeros((0, 5), dtype=np.int64),
    }
    npz = encode_arrays({k: v for k, v in arrays.items() if k != "empty"}, 256)["npz"]
    # format 4 stores no all-NaN alpha and the countries as codes
    stored = ["pred", "countries", "rows", "state_f"]
    for data, names in ((npz, stored), (_npz(arrays), list(arrays))):
        views = stored_arrays(data, names)
        with np.load(io.BytesIO(data)) as loaded:
            for name in names:
                want, got = loaded[name], views[name]
                assert got.dtype == want.dtype and got.shape == want.shape, name
                assert got.tobytes(order="A") == want.tobytes(order="A"), name
                assert got.flags.f_contiguous == want.flags.f_contiguous, name
                assert not got.flags.writeable  # a view of the result's bytes


def test_what_cannot_be_viewed_is_refused() -> None:
    plain = {"pred": np.ones((3, 2))}
    with pytest.raises(ValueError, match="no array"):
        stored_arrays(_npz(plain), ["alpha"])
    with pytest.raises(ValueError, match="compressed"):
        stored_arrays(_npz(plain, compressed=True), ["pred"])
    buffer = io.BytesIO()
    np.savez(buffer, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects"):
        stored_arrays(buffer.getvalue(), ["obj"])


def test_a_written_index_is_its_head_then_the_raw_keys(tmp_path) -> None:
    """The index written in parts (the keys a view, not joined to the head) is format 4's
    one JSON line and the n x 32 raw key bytes, and reads back."""
    from pipeline.runtime.store.fit_cache import FitCache

    rng = np.random.default_rng(1)
    n = 3000
    keys = rng.integers(0, 256, size=(n, 32), dtype=np.uint8).view("S32").ravel()
    cache = FitCache(tmp_path, "m")
    shard = encode_arrays({"pred": rng.normal(size=(n, 3))}, cache.block)
    path = cache.write_encoded(keys, shard, "t")
    head, raw = path.with_suffix(".idx").read_bytes().split(b"\n", 1)
    assert raw == keys.tobytes() and b'"n": 3000' in head
    found = cache.lookup(keys[::-7].copy(), keep=("pred",))
    assert found.index.size == keys[::-7].size and not found.damaged.size
