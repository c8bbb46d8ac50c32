"""A damaged fit-cache shard or fit-plan cache entry is detected without leaving its file open: np.load keeps
the file it opened when the zip turns out unreadable (NpzFile's constructor raises after the
file was handed to it), so each damaged file read left an open descriptor behind until the
garbage collector found it (a ResourceWarning under `python -X dev`, on a scan of many
damaged shards many descriptors)."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.runtime.store.fit_cache import FitCache


def unclosed_files(action) -> list[str]:
    """The ResourceWarnings of files left open by `action()`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        action()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_shard_whose_zip_is_unreadable_is_found_damaged_and_its_file_closed(
    tmp_path: Path,
) -> None:
    cache = FitCache(tmp_path, "m")
    entries = {
        f"k{i}": {"pred": np.full((1, 1, 3), float(i)), "alpha": np.zeros(3)} for i in range(3)
    }
    path = cache.write_shard(entries, "task")
    path.write_bytes(b"PK\x03\x04" + bytes(64))  # a zip's magic, then nothing a zip holds
    found: list[list[str]] = []
    assert (
        unclosed_files(lambda: found.append(FitCache(tmp_path, "m").verify().damaged_shards)) == []
    )
    assert found == [[path.stem]]


def test_an_unreadable_plan_cache_entry_is_dropped_and_its_file_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.runtime.fits import plan_cache

    monkeypatch.setenv(plan_cache.ENV_VAR, str(tmp_path))
    path = tmp_path / "entry.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    found: list[object] = []
    assert unclosed_files(lambda: found.append(plan_cache.load_entry("entry"))) == []
    assert found == [None] and not path.exists()  # unreadable: removed, rebuilt by the run
