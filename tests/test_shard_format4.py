"""Fit-cache shard format 4 (issue 18 item 7 at 1M): an all-NaN array (rw's alpha) stored as a
flag in the index, str arrays (the fits' countries) as codes into a table there, block
checksums that bind the driver's keys to digests a worker made without them. Its damage is
found as before (arrays, keys, the index's tables and flags) and healed; a format 3 cache,
which the previous qpipe wrote, is read as it is: nothing refits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import prepared_rw_study
from shard_files import index_path, read_head, write_format_3, write_head
from test_cache_lookup import digests

from pipeline.runtime.execute.train_loop import RunState
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.runtime.store.fit_cache import DAMAGED_DIR, FitCache
from pipeline.runtime.store.shard_format import parse_index
from pipeline.runtime.store.shard_read import read_checked
from pipeline.stages.train import run_train, train_path


def rw_like(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """A shard's arrays as rw's: forecasts, an all-NaN alpha, countries, rows, a state."""
    names = np.array(["AT", "BE", "DE", "LU", "LONGNAME"], dtype=object)
    return {
        "pred": rng.normal(size=(n, 1, 1, 3)),
        "alpha": np.full((n, 3), np.nan),
        "countries": names[rng.integers(0, 4, size=(n, 1))].astype(str),  # no LONGNAME: <U2
        "rows": np.ones((n, 1), dtype=bool),
        "state_pairs": rng.integers(0, 50, size=n),
    }


def test_alpha_is_a_flag_and_countries_are_codes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys, arrays = digests(rng, 40), rw_like(rng, 40)
    cache = FitCache(tmp_path, "m", block=8)
    path = cache.write_stacked(keys, arrays, "t")
    assert path is not None
    head, raw = read_head(index_path(path))
    assert head["format"] == 4 and raw == keys.tobytes()
    assert head["nan"] == {"alpha": ["<f8", [3]]}
    assert head["codes"] == {"countries": ["<U2", ["AT", "BE", "DE", "LU"]]}
    with np.load(io.BytesIO(path.read_bytes())) as npz:
        assert sorted(npz.files) == ["countries", "pred", "rows", "state_pairs"]
        assert npz["countries"].dtype == np.uint8 and npz["countries"].shape == (40, 1)
    # read back as written: the same dtypes, shapes and bytes
    entries = cache.verify().entries
    for i, key in enumerate(keys[i : i + 1].tobytes().hex() for i in range(40)):
        for name, a in arrays.items():
            assert entries[key][name].dtype == a.dtype, name
            assert entries[key][name].tobytes() == a[i].tobytes(), name
    found = cache.lookup(keys, keep=("pred", "alpha"))
    assert found.index.size == 40 and np.isnan(found.arrays["alpha"]).all()


def test_a_nan_with_other_bits_is_stored(tmp_path: Path) -> None:
    """Only NaN with np.nan's bytes is a flag (made again with those bytes); any other NaN
    payload, or a value, keeps the array stored."""
    rng = np.random.default_rng(1)
    keys = digests(rng, 6)
    odd = np.full((6, 3), np.nan)
    odd.view(np.uint64)[2, 1] ^= 1  # still NaN, other bits
    cache = FitCache(tmp_path, "m", block=4)
    path = cache.write_stacked(keys, {"alpha": odd}, "t")
    assert path is not None and read_head(index_path(path))[0]["nan"] == {}
    got = cache.lookup(keys, keep=("alpha",))
    assert got.arrays["alpha"][np.argsort(got.index)].tobytes() == odd.tobytes()


def damage_array(path: Path) -> None:
    """Flip one byte of the last member's data (state_pairs: entry 13's): its zip CRC fails,
    so the array cannot be read and no entry checks (as in format 3)."""
    data = bytearray(path.read_bytes())
    at = data.rfind(b"state_pairs.npy", 0, data.rfind(b"PK\x01\x02"))  # its local header
    start = data.index(b"\x93NUMPY", at)
    header = int.from_bytes(data[start + 8 : start + 10], "little")
    data[start + 10 + header + 13 * 8] ^= 1
    path.write_bytes(bytes(data))


def change_a_sum(path: Path) -> None:
    head, keys = read_head(index_path(path))
    head["sums"][1] = head["sums"][1][::-1]  # block 1 of 8
    write_head(index_path(path), head, keys)


def rename_a_country(path: Path) -> None:
    head, keys = read_head(index_path(path))
    head["codes"]["countries"][1][0] = "XX"  # the table, not the codes: every block
    write_head(index_path(path), head, keys)


def drop_the_nan_flag(path: Path) -> None:
    head, keys = read_head(index_path(path))
    head["nan"]["alpha"][1] = [2]  # alpha said (n, 2): every block
    write_head(index_path(path), head, keys)


def change_a_key(path: Path) -> None:
    head, keys = read_head(index_path(path))
    edited = bytearray(keys)
    edited[30 * 32] ^= 1  # entry 30's key: block 3 of 8
    write_head(index_path(path), head, bytes(edited))


@pytest.mark.parametrize(
    ("damage", "lost"),
    [
        (damage_array, range(40)),
        (change_a_sum, range(8, 16)),
        (change_a_key, range(24, 32)),
        (rename_a_country, range(40)),
        (drop_the_nan_flag, range(40)),
    ],
)
def test_a_damaged_format_4_shard_is_found_and_healed(tmp_path: Path, damage, lost) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    keys, arrays = digests(rng, 40), rw_like(rng, 40)
    cache = FitCache(tmp_path, "m", block=8)
    path = cache.write_stacked(keys, arrays, "t")
    assert path is not None
    damage(path)
    index = parse_index(index_path(path).read_bytes())
    read = read_checked(path, index)
    assert read is not None and np.nonzero(~read.fine)[0].tolist() == list(lost)
    found = cache.lookup(keys)
    # a changed key is no wanted key: its fit is missing, not damaged (refit all the same)
    missing = [30] if damage is change_a_key else []
    assert sorted(found.damaged.tolist()) == sorted(set(lost) - set(missing))
    assert sorted(found.index.tolist()) == sorted(set(range(40)) - set(lost))
    assert (cache.root / DAMAGED_DIR / path.name).exists() and not path.exists()
    # healed: the good entries in a new format 4 shard with their bytes; the lost ones refit
    again = FitCache(tmp_path, "m").lookup(keys, keep=("pred", "alpha"))
    assert sorted(again.index.tolist()) == sorted(set(range(40)) - set(lost))
    assert not again.damaged.size
    if again.index.size:
        assert again.arrays["pred"].tobytes() == arrays["pred"][again.index].tobytes()
    (healed,) = cache.shards.glob("*.idx") if len(lost) < 40 else [None]
    assert healed is None or read_head(healed)[0]["format"] == 4
    assert FitCache(tmp_path, "m").check().damaged == 0


def to_format_3(cache: FitCache) -> int:
    """Rewrite every shard of `cache` as the previous qpipe wrote it (format 3: every array
    stored, checksums over keys and arrays); returns how many."""
    count = 0
    for path in sorted(cache.shards.glob("*.npz")):
        index = parse_index(index_path(path).read_bytes())
        read = read_checked(path, index)
        assert read is not None and read.fine.all() and index.format == 4
        raw = index.raw_keys()
        path.unlink()
        index_path(path).unlink()
        write_format_3(cache.shards, path.stem, raw, read.stacked, index.block)
        count += 1
    return count


def test_a_format_3_cache_is_read_without_refit(tmp_path: Path) -> None:
    """A train's cache in format 3 (the previous format): the next train loads every fit
    from it (every run looks its fits up in the cache), trains none, and writes the table
    byte for byte."""
    plan = Plan(1, 2048, models={"rw": ModelPlan(96, 8, 12, seconds_per_fit=0.001)})
    config = prepared_rw_study(tmp_path)
    first = run_train(config, "rw", plan)
    assert first.trained == first.fits
    table = train_path(config, "rw").read_bytes()
    cache = FitCache(config.model_cache_dir, "rw")
    assert to_format_3(cache) >= 2
    heads = [read_head(p)[0] for p in cache.shards.glob("*.idx")]
    assert {h["format"] for h in heads} == {3} and all("alpha" in h["stacked"] for h in heads)
    again = run_train(config, "rw", plan)
    assert again.trained == 0 and again.loaded == again.fits
    assert train_path(config, "rw").read_bytes() == table
    assert FitCache(config.model_cache_dir, "rw").check().damaged == 0


def test_train_sends_no_keys_and_names_failures_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train's payloads carry no keys (32 bytes per fit), yet a failure reaches the driver's
    bookkeeping named by its key, as the worker named it before."""
    import pipeline.runtime.execute.task_loop as task_loop

    sent: list[dict] = []
    made = task_loop.task_payload

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        payload = made(*args, **kwargs)
        sent.append(payload)
        return payload

    seen: list[list[dict]] = []
    record = RunState.record_result

    def fail_one(self, task, row, result, error, queue):  # type: ignore[no-untyped-def]
        if result is not None and not seen:
            from pipeline.runtime.execute.worker import shard_arrays

            result = shard_arrays(result)
            keep = np.arange(1, len(result["index"]))
            result = {
                **{k: v for k, v in result.items() if k != "shard"},
                "index": result["index"][keep],
                "pred": result["pred"][keep],
                "alpha": result["alpha"][keep],
                "state": {n: v[keep] for n, v in result["state"].items()},
                "failed": [
                    {"index": 0, "error_type": "ValueError", "message": "x", "traceback": ""}
                ],
            }
            seen.append(result["failed"])
            out = record(self, task, row, result, error, queue)
            want = self.groups[task.group].keys[task.index[0]]
            assert out is not None and out["failed"][0]["key"] == want
            assert want in self.failed
            return out
        return record(self, task, row, result, error, queue)

    plan = Plan(1, 2048, models={"rw": ModelPlan(96, 8, 12, seconds_per_fit=0.001)})
    config = prepared_rw_study(tmp_path)
    monkeypatch.setattr(task_loop, "task_payload", spy)
    monkeypatch.setattr(RunState, "record_result", fail_one)
    summary = run_train(config, "rw", plan)
    assert sent and all("keys" not in p for p in sent)
    assert seen and summary.failed == 0 and summary.trained == summary.fits  # retried alone
