"""A run's reload from the fit cache is columnar (FitCache.lookup): wanted content keys matched
in bulk against each shard's raw keys, arrays returned stacked by position; it agrees with the
per-entry `verify`, reads only the shards it needs, checks each before using it and heals
damage; format 1 shards and keys sharing their first 8 bytes are still matched exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import prepared_rw_study, write_format_1_shard
from shard_files import index_path, read_head, write_head

from pipeline.runtime.fits.keys import hex_keys
from pipeline.runtime.store.fit_cache import DAMAGED_DIR, FitCache
from pipeline.runtime.store.key_match import KeyMatcher


def digests(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    raw[::7, -1] = 0  # digests ending in a zero byte (an S32 element alone would drop it)
    return raw.view("S32").ravel()


def arrays_of(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "pred": rng.normal(size=(n, 1, 1, 3)),
        "alpha": rng.normal(size=(n, 3)),
        "state_coef": rng.normal(size=(n, 4)),
    }


def write_parts(cache: FitCache, keys: np.ndarray, arrays: dict, **parts: slice) -> None:
    """One shard per part (label -> the rows of keys and arrays it holds)."""
    for label, rows in parts.items():
        cache.write_stacked(keys[rows], {n: a[rows] for n, a in arrays.items()}, label)


def as_dict(cache: FitCache, wanted: np.ndarray) -> dict[str, np.ndarray]:
    """lookup's result as key -> pred (what the test compares)."""
    found = cache.lookup(wanted, keep=("pred", "alpha"))
    assert len(set(found.index.tolist())) == found.index.size  # each wanted key at most once
    keys = hex_keys(wanted[found.index])
    return {k: found.arrays["pred"][j] for j, k in enumerate(keys)}


def test_lookup_finds_what_verify_finds_by_position(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys = digests(rng, 300)
    arrays = arrays_of(rng, 300)
    cache = FitCache(tmp_path, "m", block=16)
    # the second shard repeats 50 keys of the first (trained twice: the same bytes)
    write_parts(cache, keys, arrays, a=slice(200), b=slice(150, 300))
    unknown = digests(np.random.default_rng(9), 40)
    wanted = np.concatenate([keys[::3], unknown, keys[1::3]])
    rng.shuffle(wanted)
    found = cache.lookup(wanted, keep=("pred", "alpha"))
    assert not found.damaged.size and not found.damaged_shards
    assert sorted(found.index.tolist()) == sorted(np.nonzero(np.isin(wanted, keys))[0].tolist())
    position = {bytes(k): i for i, k in enumerate(keys.view(np.uint8).reshape(-1, 32))}
    source = [position[bytes(k)] for k in wanted[found.index].view(np.uint8).reshape(-1, 32)]
    np.testing.assert_array_equal(found.arrays["pred"], arrays["pred"][source])
    np.testing.assert_array_equal(found.arrays["alpha"], arrays["alpha"][source])
    entries = cache.verify(keep=("pred",)).entries
    got = as_dict(cache, wanted)
    assert got.keys() <= entries.keys() and len(got) == found.index.size
    assert all(np.array_equal(v, entries[k]["pred"]) for k, v in got.items())


def test_lookup_reads_only_shards_it_needs_and_heals_a_damaged_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    keys = digests(rng, 64)
    arrays = arrays_of(rng, 64)
    cache = FitCache(tmp_path, "m", block=8)
    write_parts(cache, keys, arrays, a=slice(32), b=slice(32, None))
    first, second = sorted(cache.shards.glob("*.idx"))
    # shard b: the block of its entries 8..15 no longer matches its bytes
    index, raw = read_head(second)
    index["sums"][1] = "0" * 64
    write_head(second, index, raw)
    # a lookup that wants nothing of b does not read it, so does not see its damage
    only_a = cache.lookup(keys[:32])
    assert only_a.index.size == 32 and not only_a.damaged_shards and second.exists()
    found = cache.lookup(keys)
    assert found.damaged_shards == [second.stem] and not second.exists()
    assert sorted(found.damaged.tolist()) == list(range(40, 48))
    assert sorted(found.index.tolist()) == [*range(40), *range(48, 64)]
    assert (cache.root / DAMAGED_DIR / second.name).exists()
    # healed: the good blocks' entries rewritten whole (fitted state too), nothing damaged now
    again = FitCache(tmp_path, "m").lookup(keys, keep=("state_coef",))
    assert not again.damaged.size and sorted(again.index.tolist()) == sorted(found.index.tolist())
    np.testing.assert_array_equal(again.arrays["state_coef"], arrays["state_coef"][again.index])
    assert first.exists()


def test_a_damaged_copy_yields_to_a_good_one_and_an_unreadable_shard_is_moved(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    keys = digests(rng, 20)
    arrays = arrays_of(rng, 20)
    cache = FitCache(tmp_path, "m", block=4)
    cache.write_stacked(keys, arrays, "a")  # the first in name order: damaged below
    cache.write_stacked(keys[:10], {n: a[:10] for n, a in arrays.items()}, "b")
    damaged = next(cache.shards.glob("a-*.npz"))
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated: nothing of it is readable
    found = cache.lookup(keys)
    assert sorted(found.index.tolist()) == list(range(10))  # from b
    assert sorted(found.damaged.tolist()) == list(range(10, 20))  # only in the damaged a
    np.testing.assert_array_equal(found.arrays["pred"], arrays["pred"][found.index])
    assert not damaged.exists()
    (cache.shards / "junk.json").write_text("{not json")
    assert FitCache(tmp_path, "m").lookup(keys).damaged_shards == ["junk"]
    assert not (cache.shards / "junk.json").exists()


def test_a_format_1_shard_and_listed_keys_are_looked_up(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    keys = digests(rng, 3)
    hexed = hex_keys(keys).tolist()
    cache = FitCache(tmp_path, "m")
    entries = {
        k: {"pred": np.full((1, 1, 3), float(i)), "alpha": np.zeros(3), "state_c": np.arange(i)}
        for i, k in enumerate(hexed)
    }
    write_format_1_shard(cache.shards, entries, damaged=1)
    found = cache.lookup(keys, keep=("pred", "alpha"))
    assert found.index.tolist() == [0, 2] and found.damaged.tolist() == [1]
    np.testing.assert_array_equal(found.arrays["pred"][:, 0, 0, 0], [0.0, 2.0])
    healed = FitCache(tmp_path, "m").lookup(keys, keep=("pred",))
    assert healed.index.tolist() == [0, 2] and not healed.damaged.size
    # the healed shard (format 2) keeps the ragged state of its good entries
    entries_now = FitCache(tmp_path, "m").verify().entries
    np.testing.assert_array_equal(entries_now[hexed[2]]["state_c"], np.arange(2))
    # keys that are not content keys never match a wanted digest (and are not read)
    FitCache(tmp_path, "m").write_shard({"k0": entries[hexed[0]]}, "plain")
    assert FitCache(tmp_path, "m").lookup(keys[:1]).index.tolist() == [0]


def test_keys_sharing_their_first_bytes_are_matched_whole() -> None:
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    raw[1, :8] = raw[0, :8]  # two wanted keys with the same 8-byte prefix
    raw[2, :31] = raw[3, :31]  # and two differing only in their last byte
    raw[2, 31], raw[3, 31] = 0, 1
    wanted = raw.view("S32").ravel()
    match = KeyMatcher(wanted)
    assert not match.by_prefix
    probe = np.concatenate([wanted[[3, 1, 0, 2]], digests(rng, 5)])
    rows, where = match(probe)
    assert rows.tolist() == [0, 1, 2, 3] and where.tolist() == [3, 1, 0, 2]
    # with unique prefixes: a key equal to a wanted one in its first 8 bytes only is no match
    unique = KeyMatcher(wanted[10:])
    near = raw[10:11].copy()
    near[0, 20] ^= 1
    assert unique.by_prefix and unique(near.view("S32").ravel())[0].size == 0
    assert unique(wanted[10:11])[1].tolist() == [0]


def test_check_counts_what_verify_finds(tmp_path: Path) -> None:
    """`python -m pipeline verify`'s columnar count: distinct keys good, distinct keys only in
    damaged blocks, damaged shards; the same as the per-entry verify on a copy."""
    import shutil

    rng = np.random.default_rng(5)
    keys = digests(rng, 40)
    arrays = arrays_of(rng, 40)
    cache = FitCache(tmp_path / "a", "m", block=4)
    write_parts(cache, keys, arrays, a=slice(30), b=slice(20, None))
    cache.write_shard({"plain": {"pred": np.zeros(3)}}, "c")
    first = next(cache.shards.glob("a-*.idx"))
    index, raw = read_head(first)
    index["sums"][0] = index["sums"][6] = "0" * 64  # keys 0-3 (lost) and 24-27 (also in b)
    write_head(first, index, raw)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    report = cache.check()
    per_entry = FitCache(tmp_path / "b", "m").verify(keep=())
    assert (report.fits, report.damaged) == (len(per_entry.entries), len(per_entry.damaged_keys))
    assert (report.fits, report.damaged) == (37, 4)
    assert report.damaged_shards == [first.stem] == per_entry.damaged_shards
    assert FitCache(tmp_path / "a", "m").check().damaged_shards == []  # healed


def test_train_reloads_without_a_str_or_dict_per_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed train (one task's shard gone: its fits refit, the rest reloaded) makes no
    hex key per fit and no entry dict: the cache's per-entry `verify` and the groups' hex keys
    are never called, and its table is the uninterrupted run's, byte for byte."""
    import pipeline.runtime.fits.fit_groups as fit_groups
    from pipeline.runtime.sizing.plan import ModelPlan, Plan
    from pipeline.stages.train import run_train, train_path

    config = prepared_rw_study(tmp_path)  # tasks of 8 fits, in the driver
    plan = Plan(1, 2048, models={"rw": ModelPlan(96, 8, 12, seconds_per_fit=0.001)})
    first = run_train(config, "rw", plan)
    table = train_path(config, "rw").read_bytes()
    shards = sorted(FitCache(config.model_cache_dir, "rw").shards.glob("*.npz"))
    assert len(shards) >= 2
    index_path(shards[1]).unlink()  # a task killed before its index was written

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a str or dict per fit on the reload path")

    monkeypatch.setattr(fit_groups, "hex_keys", forbidden)
    monkeypatch.setattr(FitCache, "verify", forbidden)
    again = run_train(config, "rw", plan)
    assert 0 < again.trained < first.fits and again.loaded + again.trained == first.fits
    assert train_path(config, "rw").read_bytes() == table
