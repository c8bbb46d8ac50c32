"""The fit cache's shard index, formats 3 and 4 (a JSON line, then the content keys as raw
digests) beside format 2 (all JSON, the keys as one hex string), which an older qpipe wrote: an
old cache is read as it is (no refit), its damage still found and healed into format 4 shards,
and a torn index is an unreadable index like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from shard_files import encode_format_3, index_path, read_head
from test_cache_lookup import arrays_of, digests

from pipeline.runtime.store.fit_cache import DAMAGED_DIR, FitCache
from pipeline.runtime.store.shard_format import index_text, key_text


def write_format_2(cache: FitCache, keys: np.ndarray, arrays: dict, label: str) -> Path:
    """A shard as the previous qpipe wrote it: the same npz, its index `<name>.json` with the
    keys as one hex string (shard_format.index_text)."""
    npz, sums = encode_format_3(keys, arrays, cache.block)
    text = index_text(key_text(keys), list(arrays), None, sums, len(keys), cache.block)
    cache.shards.mkdir(parents=True, exist_ok=True)
    path = cache.shards / f"{label}-old.npz"
    path.write_bytes(npz)
    path.with_suffix(".json").write_text(text)
    return path


def test_a_format_2_cache_is_read_without_refit_and_healed_into_format_4(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    keys, arrays = digests(rng, 24), arrays_of(rng, 24)
    cache = FitCache(tmp_path, "m", block=4)
    old = write_format_2(cache, keys[:16], {n: a[:16] for n, a in arrays.items()}, "a")
    cache.write_stacked(keys[16:], {n: a[16:] for n, a in arrays.items()}, "b")
    new = next(cache.shards.glob("b-*.npz"))
    assert index_path(new).exists() and read_head(index_path(new))[0]["format"] == 4
    # every fit of both formats is found, with its arrays
    found = cache.lookup(keys)
    assert sorted(found.index.tolist()) == list(range(24)) and not found.damaged.size
    np.testing.assert_array_equal(found.arrays["pred"], arrays["pred"][found.index])
    assert cache.check().fits == 24 and len(cache.keys()) == 24
    # a damaged block of the old shard is found; its good entries move to a format 4 shard
    index = json.loads(old.with_suffix(".json").read_text())
    index["sums"][1] = "0" * 64  # entries 4..7
    old.with_suffix(".json").write_text(json.dumps(index, sort_keys=True) + "\n")
    found = FitCache(tmp_path, "m", block=4).lookup(keys)
    assert sorted(found.damaged.tolist()) == [4, 5, 6, 7]
    assert (cache.root / DAMAGED_DIR / old.name).exists() and not old.exists()
    assert not list(cache.shards.glob("*.json"))  # healed shards are format 4
    again = FitCache(tmp_path, "m").lookup(keys)
    assert sorted(again.index.tolist()) == [*range(4), *range(8, 24)]


def test_a_torn_format_3_index_is_unreadable_and_moved_aside(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    keys, arrays = digests(rng, 12), arrays_of(rng, 12)
    cache = FitCache(tmp_path, "m", block=4)
    cache.write_stacked(keys, arrays, "t")
    (npz,) = cache.shards.glob("*.npz")
    index = index_path(npz)
    index.write_bytes(index.read_bytes()[:-5])  # the last key cut short
    found = cache.lookup(keys)
    assert found.damaged_shards == [npz.stem] and not found.index.size
    damaged = cache.root / DAMAGED_DIR
    assert (damaged / npz.name).exists() and (damaged / index.name).exists()
    assert not list(cache.shards.iterdir())


def test_an_arrays_file_without_its_format_3_index_is_an_orphan(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    keys, arrays = digests(rng, 8), arrays_of(rng, 8)
    cache = FitCache(tmp_path, "m")
    cache.write_stacked(keys[:4], {n: a[:4] for n, a in arrays.items()}, "kept")
    cache.write_stacked(keys[4:], {n: a[4:] for n, a in arrays.items()}, "killed")
    killed = next(cache.shards.glob("killed-*.npz"))
    index_path(killed).unlink()  # a driver killed between its two renames
    assert cache.remove_orphans(min_age_s=0) == [killed]
    kept = next(cache.shards.glob("kept-*.npz"))
    assert kept.exists() and index_path(kept).exists()
