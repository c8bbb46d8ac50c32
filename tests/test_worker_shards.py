"""A task's fit-cache shard encoded by the worker that ran it (worker.shard_bytes): the same
arrays, index and checksums the driver would write from the result, so that the driver only
writes the bytes (issue 18 item 7: the driver's serial CPU per fit on a cluster). A shard that
names other fits than the driver sent is not written: the driver encodes the result itself."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import prepared_rw_study
from test_tasks import PANEL, study

from pipeline.models.plugins.registry import get_adapter
from pipeline.runtime.execute.train_loop import RunState
from pipeline.runtime.execute.worker import run_task, shard_bytes
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.tasks import task_payload
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.store.shard_format import index_keys_hex
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
    fits that succeeded, as the driver's `astype(str)` makes it): the worker's index bytes
    equal the driver's, and so do the npz's members (names, order, dtypes, shapes, bytes)."""
    config = study()
    params = {"p": 1} if model == "ar_qr" else {}
    cache = FitCache(tmp_path, model, block=4)  # blocks of 4: several checksums per shard
    panel = PANEL.assign(COUNTRY=PANEL["COUNTRY"].replace({"BB": "BBBB"}))
    for g in build_groups(panel, config, get_adapter(model)):
        idx = np.arange(len(g))
        payload = task_payload(
            g, idx, params=params, quantiles=config.data.quantiles, seed=0, compact=True
        )
        payload["shard_block"] = cache.block
        result = run_task(payload)
        assert "shard" in result and result["index"].size == idx.size
        short = np.nonzero(g.countries[idx, 0] != "BBBB")[0]  # the longer name's fits failed
        for part in (result, cut(result, short), cut(result, np.arange(0, idx.size, 3))):
            shard = part["shard"] if part is result else shard_bytes(payload, part)
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
            assert shard["index"] == path.with_suffix(".json").read_bytes()
            assert npz_members(shard["npz"]) == npz_members(path.read_bytes())
    assert cache.check().damaged == 0


def test_a_payload_without_a_shard_block_gets_no_shard() -> None:
    """The probe's tasks and the driver's own encoding: no `shard_block`, no shard."""
    config = study()
    g = build_groups(PANEL, config, get_adapter("rw"))[0]
    payload = task_payload(g, np.arange(len(g)), params={}, quantiles=[0.5], seed=0)
    assert "shard" not in run_task(payload)


def shards_by_content(config) -> list[tuple[bytes, list]]:  # type: ignore[no-untyped-def]
    cache = FitCache(config.model_cache_dir, "rw")
    return sorted(
        (p.with_suffix(".json").read_bytes(), npz_members(p.read_bytes()))
        for p in cache.shards.glob("*.npz")
    )


def test_train_writes_the_workers_shards_as_the_driver_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole train (its tasks through run_task in the driver's worker-like child): the
    shards the worker encoded, the shards the driver encodes when the payload asks for none,
    and the shards the driver encodes when a worker's shard names other fits (its index's
    keys altered on the way) hold the same indexes and arrays; the forecast tables are the
    same bytes, and every shard checks good."""
    plan = Plan(1, 2048, models={"rw": ModelPlan(96, 8, 12, seconds_per_fit=0.001)})
    written: list[Path] = []
    write_encoded = FitCache.write_encoded

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        written.append(write_encoded(self, *args, **kwargs))
        return written[-1]

    monkeypatch.setattr(FitCache, "write_encoded", counted)
    workers = prepared_rw_study(tmp_path / "workers")
    run_train(workers, "rw", plan)
    encoded_by_workers = len(written)

    driver = prepared_rw_study(tmp_path / "driver")
    with monkeypatch.context() as patch:
        patch.setattr(RunState, "shard_block", 0, raising=False)  # the payloads ask for none
        original = RunState.__init__

        def no_block(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            original(self, *args, **kwargs)
            self.shard_block = 0

        patch.setattr(RunState, "__init__", no_block)
        run_train(driver, "rw", plan)

    altered = prepared_rw_study(tmp_path / "altered")
    record = RunState.record_result
    seen = []

    def alter(self, task, row, result, error, queue):  # type: ignore[no-untyped-def]
        if result is not None and "shard" in result:
            keys = index_keys_hex(result["shard"]["index"])
            assert keys is not None
            wrong = keys[64:] + keys[:64]  # the same keys, in another order
            seen.append(wrong != keys)
            result["shard"]["index"] = result["shard"]["index"].replace(keys, wrong)
        return record(self, task, row, result, error, queue)

    monkeypatch.setattr(RunState, "record_result", alter)
    with caplog.at_level(logging.WARNING, logger="pipeline.train"):
        run_train(altered, "rw", plan)
    assert seen and all(seen)
    # the workers' shards written as they came; the driver's own encoding writes its bytes too
    assert encoded_by_workers == len(seen) == len(written) // 3
    assert "its shard names other fits; encoded here" in caplog.text

    expected = shards_by_content(driver)
    assert len(expected) >= 2
    for config in (workers, altered):
        assert shards_by_content(config) == expected
        assert train_path(config, "rw").read_bytes() == train_path(driver, "rw").read_bytes()
        report = FitCache(config.model_cache_dir, "rw").check()
        assert report.damaged == 0
        assert report.fits == sum(json.loads(text)["n"] for text, _ in expected)
