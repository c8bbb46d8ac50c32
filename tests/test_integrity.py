"""Damaged files heal: cache shards (truncated, random bytes, unreadable index) are detected by
checksum, named, moved aside and refit; an unreadable progress store is rebuilt from the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_study, write_format_1_shard
from shard_files import index_path

from pipeline.models.plugins import registry
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.store.progress import ProgressStore, db_path
from pipeline.runtime.store.shard_format import parse_index
from pipeline.runtime.ui.monitor import monitor

TINY = tiny_study(*registry.only("ar_qr"), "runtime.max_in_flight=1")


def entry(i: int) -> dict[str, np.ndarray]:
    return {
        "pred": np.full((1, 1, 3), float(i)),
        "alpha": np.full(3, np.nan),
        "state_c": np.arange(i),
    }


def shard_paths(cache: FitCache) -> list[Path]:
    return sorted(cache.shards.glob("*.npz"))


@pytest.mark.parametrize(
    "keys",
    [[f"k{i}" for i in range(5)], ["k0", 'k"1', "k\\2", "k 3", "k\u00e94"]],
    ids=["plain", "escaped"],
)
def test_a_stacked_shard_is_the_shard_of_its_entries_and_damage_in_it_is_found(
    tmp_path: Path, keys: list[str]
) -> None:
    """write_stacked (train's fast path) writes what write_shard writes for the same entries:
    the same index (checksums included), so verify treats both alike; keys JSON must escape
    (a quote, a backslash, a space, non-ASCII) are written as json.dumps writes them."""
    rng = np.random.default_rng(0)
    arrays = {
        "pred": rng.normal(size=(5, 1, 2, 3)),
        "alpha": np.full((5, 3), np.nan),
        "countries": np.array([["AT"], ["BE"], ["CZ"], ["DE"], ["EE"]]),
        "rows": np.ones((5, 1), dtype=bool),
        "state_coef": rng.normal(size=(5, 3, 4)).astype(np.float32),
        "state_crossing": rng.uniform(size=5),  # one scalar per entry
    }
    one, many = FitCache(tmp_path / "a", "m"), FitCache(tmp_path / "b", "m")
    stacked = one.write_stacked(keys, arrays, "t")
    many.write_shard({k: {n: v[i] for n, v in arrays.items()} for i, k in enumerate(keys)}, "t")
    texts = [p.read_text() for p in (*one.shards.glob("*.json"), *many.shards.glob("*.json"))]
    # the same bytes, those json.dumps(index, sort_keys=True) writes (the text is built directly)
    assert texts[0] == texts[1] == json.dumps(json.loads(texts[0]), sort_keys=True) + "\n"
    entries = one.verify().entries
    assert sorted(entries) == sorted(keys)
    np.testing.assert_array_equal(entries[keys[3]]["state_coef"], arrays["state_coef"][3])
    raw = bytearray(stacked.read_bytes())
    raw[-400:-300] = bytes(100)  # inside the members
    stacked.write_bytes(bytes(raw))
    assert FitCache(tmp_path / "a", "m").verify().damaged_shards


def test_entries_round_trip_and_damage_is_found_and_healed(tmp_path: Path) -> None:
    cache = FitCache(tmp_path, "m")
    for s in range(3):
        cache.write_shard({f"k{s}{i}": entry(i) for i in range(4)}, f"run-task{s}")
    report = cache.verify()
    assert len(report.entries) == 12 and not report.damaged_shards
    assert np.array_equal(report.entries["k23"]["state_c"], np.arange(3))  # ragged state kept
    a, b, c = shard_paths(cache)
    a.write_bytes(a.read_bytes()[: a.stat().st_size // 2])  # truncated
    raw = bytearray(b.read_bytes())
    raw[40:80] = np.random.default_rng(0).integers(0, 256, 40, dtype=np.uint8).tobytes()
    b.write_bytes(bytes(raw))  # random bytes inside the first entry's data
    c.with_suffix(".json").write_text("{not json")  # unreadable index
    report = cache.verify(keep=("pred",))
    assert sorted(report.damaged_shards) == sorted(p.stem for p in (a, b, c))
    # entries of the two readable indexes are damaged or kept; the unreadable index's keys are
    # unknown, hence not cached, hence refit
    assert set(report.damaged_keys) | set(report.entries) == {
        f"k{s}{i}" for s in (0, 1) for i in range(4)
    }
    assert {"k00", "k10"} <= set(report.damaged_keys)
    assert all(set(e) == {"pred"} for e in report.entries.values())
    # damaged shards are moved aside (not deleted); good entries live on in a healed shard
    assert sorted(p.name for p in (cache.root / "damaged").iterdir()) == sorted(
        n for p in (a, b, c) for n in (p.name, p.with_suffix(".json").name)
    )
    again = cache.verify()
    assert not again.damaged_shards and set(again.entries) == set(report.entries)


def test_orphan_shards_and_temp_files_are_removed_only_when_old(tmp_path: Path) -> None:
    cache = FitCache(tmp_path, "m")
    cache.write_shard({"k": entry(1)}, "ok")
    orphan = cache.shards / "dead.npz"
    orphan.write_bytes(b"x")
    tmp = cache.shards / ".dead.npz.abc.tmp"
    tmp.write_bytes(b"x")
    assert cache.remove_orphans() == []  # could be a live writer sharing the cache
    assert sorted(cache.remove_orphans(min_age_s=0)) == sorted([orphan, tmp])
    assert cache.keys() == {"k"}


def test_an_unreadable_progress_store_is_moved_aside_and_monitor_explains(
    tmp_path: Path, capsys
) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    assert monitor(tmp_path) == 2
    out = capsys.readouterr().out
    assert (
        "unreadable" in out and "rebuilds it from the fit cache" in out and "Traceback" not in out
    )
    with ProgressStore(path) as store:
        assert store.rebuilt_from is not None and store.rebuilt_from.exists()
        assert store.counts() == {}


def run_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *TINY, *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_damaged_cache_and_store_heal_in_the_same_dir_and_in_a_dir_sharing_the_cache(
    tmp_path: Path,
) -> None:
    clean = run_cli(tmp_path, f"runtime.output_dir={tmp_path / 'a'}")
    assert clean.returncode == 0, clean.stderr
    want = pd.read_parquet(tmp_path / "a/forecasts/all.parquet")
    cache = FitCache(tmp_path / "a/models", "ar_qr")
    shards = shard_paths(cache)
    assert len(shards) >= 3 and len(cache.keys()) == 18
    index = {p: parse_index(index_path(p).read_bytes()) for p in shards}
    truncated, scrambled = shards[0], shards[1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    raw = bytearray(scrambled.read_bytes())
    raw[60:200] = bytes(range(140))
    scrambled.write_bytes(bytes(raw))
    store = db_path(tmp_path / "a")
    raw = bytearray(store.read_bytes())
    raw[0:4096] = b"\x5a" * 4096  # the header page: "file is not a database"
    store.write_bytes(bytes(raw))
    damaged = {k for p in (truncated, scrambled) for k in index[p].keys}

    same = run_cli(tmp_path, f"runtime.output_dir={tmp_path / 'a'}")
    assert same.returncode == 0, same.stderr
    assert truncated.name in same.stderr and scrambled.name in same.stderr  # named
    assert f"{len(damaged)} damaged cache entries will be refit" in same.stderr
    assert "progress store" in same.stderr and "rebuilding it from the fit cache" in same.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a/forecasts/all.parquet"), want)
    assert len(FitCache(tmp_path / "a/models", "ar_qr").verify().entries) == 18

    # damage again, then a new output dir sharing the cache heals it too
    healed = shard_paths(FitCache(tmp_path / "a/models", "ar_qr"))
    healed[-1].write_bytes(b"garbage")
    shared = run_cli(
        tmp_path,
        f"runtime.output_dir={tmp_path / 'b'}",
        f"runtime.model_cache_dir={tmp_path / 'a/models'}",
    )
    assert shared.returncode == 0, shared.stderr
    assert healed[-1].name in shared.stderr and "will be refit" in shared.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b/forecasts/all.parquet"), want)


def test_verify_keeps_what_is_asked_but_heals_a_shard_with_every_array(tmp_path: Path) -> None:
    """train verifies with keep=("pred", "alpha"), so a whole shard's entries hold only those;
    a shard with a damaged block is rewritten from its good blocks' entries with all their
    arrays (their fitted state too), and only the damaged block's fits are refit."""
    rng = np.random.default_rng(1)
    keys = [f"k{i}" for i in range(5)]
    arrays = {
        "pred": rng.normal(size=(5, 1, 1, 3)),
        "alpha": rng.normal(size=(5, 3)),
        "state_coef": rng.normal(size=(5, 5)),
    }
    cache = FitCache(tmp_path, "m", block=2)  # blocks k0 k1 | k2 k3 | k4
    cache.write_stacked(keys, arrays, "whole")
    report = cache.verify(keep=("pred", "alpha"))
    assert sorted(report.entries) == keys and not report.damaged_shards
    assert all(sorted(e) == ["alpha", "pred"] for e in report.entries.values())
    (path,) = cache.shards.glob("*.json")  # plain keys: format 2's JSON index
    index = json.loads(path.read_text())
    assert index["block"] == 2 and len(index["sums"]) == 3
    index["sums"][1] = "0" * 64  # the block of k2 and k3 no longer matches its bytes
    path.write_text(json.dumps(index, sort_keys=True) + "\n")
    report = FitCache(tmp_path, "m").verify(keep=("pred",))
    assert report.damaged_keys == ["k2", "k3"] and sorted(report.entries) == ["k0", "k1", "k4"]
    assert all(sorted(e) == ["pred"] for e in report.entries.values())
    healed = FitCache(tmp_path, "m").verify().entries
    assert sorted(healed) == ["k0", "k1", "k4"]
    np.testing.assert_array_equal(healed["k4"]["state_coef"], arrays["state_coef"][4])


def test_content_keys_are_stored_raw_and_a_changed_key_is_found(tmp_path: Path) -> None:
    """Content keys (64 lowercase hex) go into the index (format 4: a JSON line, then the raw
    digests), whether given as str or as raw bytes, and the checksums cover them: a key
    edited in the index fails its block."""
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (6, 32), dtype=np.uint8)
    raw[0, -1] = 0  # a digest ending in a zero byte (an S32 element would drop it)
    keys = [bytes(r).hex() for r in raw]
    arrays = {"pred": rng.normal(size=(6, 1, 1, 3)), "alpha": np.full((6, 3), np.nan)}
    a, b = FitCache(tmp_path / "a", "m", block=4), FitCache(tmp_path / "b", "m", block=4)
    a.write_stacked(raw.view("S32").ravel(), arrays, "t")
    b.write_stacked(keys, arrays, "t")
    data = [next(c.shards.glob("*.idx")).read_bytes() for c in (a, b)]
    head, _, tail = data[0].partition(b"\n")
    assert data[0] == data[1] and tail == raw.tobytes() and json.loads(head)["format"] == 4
    assert head == json.dumps(json.loads(head), sort_keys=True).encode()
    assert not list(a.shards.glob("*.json"))
    assert sorted(a.verify().entries) == sorted(keys)
    (path,) = a.shards.glob("*.idx")
    edited = bytearray(data[0])
    edited[-1] ^= 1  # the last key's last byte
    path.write_bytes(bytes(edited))
    report = FitCache(tmp_path / "a", "m").verify()
    assert sorted(report.entries) == sorted(keys[:4]) and len(report.damaged_keys) == 2


def test_a_format_1_shard_is_still_read(tmp_path: Path) -> None:
    """A shard written before the columnar format (one sha256 per entry) is read and checked
    entry by entry, so an upgraded qpipe does not refit an existing cache."""
    cache = FitCache(tmp_path, "m")
    write_format_1_shard(cache.shards, {f"k{i}": entry(i + 1) for i in range(3)}, damaged=1)
    report = cache.verify()
    assert sorted(report.entries) == ["k0", "k2"] and report.damaged_keys == ["k1"]
    np.testing.assert_array_equal(report.entries["k2"]["state_c"], np.arange(3))
    assert FitCache(tmp_path, "m").verify().entries.keys() == {"k0", "k2"}  # healed, format 2
