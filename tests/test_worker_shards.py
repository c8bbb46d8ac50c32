"""A task's fit-cache shard encoded by the worker that ran it (worker.shard_bytes): the same
arrays and checksums the driver would write from the result, so that the driver only splices
its keys into the index and writes the bytes (issue 18 item 7: the driver's serial CPU per fit
on a cluster). A worker's checksums that do not match what it sent are found when the shard is
next read, and its fits refit, as for any damaged shard."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import prepared_rw_study
from shard_files import index_path
from test_tasks import PANEL, study

from pipeline.models.plugins.registry import get_adapter
from pipeline.runtime.execute.train_loop import RunState
from pipeline.runtime.execute.worker import run_task, shard_arrays, shard_bytes
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.tasks import task_payload
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.stages.train import run_train, train_path


def npz_members(data: bytes) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Each member of an npz, in order: name, dtype, shape, bytes (the zip's timestamps,
    which np.savez sets to the time of writing, left out)."""
    with np.load(io.BytesIO(data)) as npz:
        return [(n, npz[n].dtype.str, npz[n].shape, npz[n].tobytes()) for n in npz.files]


def cut(result: dict, keep: np.ndarray) -> dict:
    """`result` as if only its fits at `keep` (positions in its index) had succeeded."""
    return {
        **result,
        "index": result["index"][keep],
        "pred": result["pred"][keep],
        "alpha": result["alpha"][keep],
        "state": {n: v[keep] for n, v in result["state"].items()},
    }


@pytest.mark.parametrize("model", ["ar_qr", "rw"])
def test_a_workers_shard_has_the_bytes_the_driver_would_write(tmp_path: Path, model: str) -> None:
    """For a model with a fitted state (ar_qr) and one without (rw), whole tasks and tasks
    where some fits failed (the countries column then as wide as the longest country of the
    fits that succeeded, as the driver's `astype(str)` makes it): the shard written from the
    worker's encoding has the index bytes of the driver's own, and the same npz members
    (names, order, dtypes, shapes, bytes); the result's forecasts read back from it are the
    worker's."""
    config = study()
    params = {"p": 1} if model == "ar_qr" else {}
    cache = FitCache(tmp_path, model, block=4)  # blocks of 4: several checksums per shard
    panel = PANEL.assign(COUNTRY=PANEL["COUNTRY"].replace({"BB": "BBBB"}))
    for g in build_groups(panel, config, get_adapter(model)):
        idx = np.arange(len(g))
        payload = task_payload(
            g, idx, params=params, quantiles=config.data.quantiles, seed=0, compact=True,
            keys=False,  # as train sends it: the driver binds the keys
        )  # fmt: skip
        result = run_task(payload)
        assert "shard" not in result  # the payload asks for none
        payload["shard_block"] = cache.block
        sent = run_task(payload)
        assert "shard" in sent and "pred" not in sent and "alpha" not in sent
        back = shard_arrays(sent)
        assert back["pred"].tobytes() == result["pred"].tobytes()
        assert back["alpha"].tobytes() == result["alpha"].tobytes()
        assert back["index"].tobytes() == result["index"].tobytes()
        assert back["state"].keys() == result["state"].keys()
        for name, value in result["state"].items():
            assert back["state"][name].tobytes() == value.tobytes(), name
        short = np.nonzero(g.countries[idx, 0] != "BBBB")[0]  # the longer name's fits failed
        for part in (result, cut(result, short), cut(result, np.arange(0, idx.size, 3))):
            shard = sent["shard"] if part is result else shard_bytes(payload, part)
            assert shard is not None
            fits = idx[part["index"]]
            arrays = {
                "pred": part["pred"],
                "alpha": part["alpha"],
                "countries": g.countries[fits].astype(str),
                "rows": np.asarray(g.rows[fits], dtype=bool),
                **part["state"],
            }
            path = cache.write_stacked(g.key_bytes()[fits], arrays, "driver")
            assert path is not None
            mine = cache.write_encoded(g.key_bytes()[fits], shard)
            index = index_path(path).read_bytes()
            assert index_path(mine).read_bytes() == index
            assert npz_members(mine.read_bytes()) == npz_members(path.read_bytes())
    assert cache.check().damaged == 0


def shards_by_content(config) -> list[tuple[bytes, list]]:  # type: ignore[no-untyped-def]
    cache = FitCache(config.model_cache_dir, "rw")
    return sorted(
        (index_path(p).read_bytes(), npz_members(p.read_bytes()))
        for p in cache.shards.glob("*.npz")
    )


def test_train_writes_the_workers_shards_as_the_driver_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole train (its tasks through run_task in the driver's worker-like child): the
    shards the workers encoded and the shards the driver encodes when the payloads ask for
    none hold the same indexes and arrays, the forecast tables are the same bytes, and every
    shard checks good."""
    plan = Plan(1, 2048, models={"rw": ModelPlan(96, 8, 12, seconds_per_fit=0.001)})
    written: list[Path] = []
    write_stacked = FitCache.write_stacked

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        written.append(write_stacked(self, *args, **kwargs))
        return written[-1]

    monkeypatch.setattr(FitCache, "write_stacked", counted)  # the driver's own encoding
    workers = prepared_rw_study(tmp_path / "workers")
    run_train(workers, "rw", plan)
    assert not written

    driver = prepared_rw_study(tmp_path / "driver")
    original = RunState.__init__

    def no_block(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        self.shard_block = 0  # the payloads ask for no shard

    monkeypatch.setattr(RunState, "__init__", no_block)
    run_train(driver, "rw", plan)
    expected = shards_by_content(driver)
    assert len(written) == len(expected) >= 2
    assert shards_by_content(workers) == expected
    assert train_path(workers, "rw").read_bytes() == train_path(driver, "rw").read_bytes()
    report = FitCache(workers.model_cache_dir, "rw").check()
    assert report.damaged == 0
    assert report.fits == sum(json.loads(data.partition(b"\n")[0])["n"] for data, _ in expected)


def test_a_workers_wrong_checksums_are_found_on_the_next_read_and_refit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's shard whose checksums do not match its arrays (one altered on the way) is
    written as it came; the next train's lookup finds its fits damaged, refits them, and the
    table is the one of an undisturbed train, byte for byte."""
    plan = Plan(1, 2048, models={"rw": ModelPlan(96, 8, 12, seconds_per_fit=0.001)})
    clean = prepared_rw_study(tmp_path / "clean")
    run_train(clean, "rw", plan)
    record = RunState.record_result
    altered: list[int] = []

    def alter(self, task, row, result, error, queue):  # type: ignore[no-untyped-def]
        if result is not None and "shard" in result and not altered:
            digests = result["shard"]["digests"]
            result["shard"]["digests"] = bytes([digests[0] ^ 1]) + digests[1:]
            altered.append(len(task.index))  # every fit of it succeeded
        return record(self, task, row, result, error, queue)

    config = prepared_rw_study(tmp_path / "altered")
    with monkeypatch.context() as patch:
        patch.setattr(RunState, "record_result", alter)
        first = run_train(config, "rw", plan)
    assert altered and first.trained == first.fits
    again = run_train(config, "rw", plan)
    assert 0 < again.trained <= min(altered[0], FitCache(tmp_path, "rw").block)
    assert again.loaded + again.trained == again.fits
    assert train_path(config, "rw").read_bytes() == train_path(clean, "rw").read_bytes()
    assert FitCache(config.model_cache_dir, "rw").check().damaged == 0
