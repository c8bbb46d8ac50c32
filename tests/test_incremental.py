"""Incremental `run` (issue 18): a stage whose inputs did not change is skipped with one line;
a changed param reruns exactly the stages that read it; a rewritten cache shard reruns train,
which verifies it; outputs of a skipped run are the same bytes."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import pytest
from conftest import SMALL_STUDY, make_config

from pipeline.models.plugins import registry
from pipeline.runner import run_study
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.store.timings import read_timings


def rw_study(out: Path, **evaluation: object) -> dict:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(out)
    d["runtime"]["in_process_below_s"] = 1e9  # rw in the driver: no cluster in this test
    d["models"] = registry.only_entries("rw")
    d["evaluation"] = {"combo": {"enabled": False}, "mcs_reps": 20, **evaluation}
    return d


def skipped(caplog: pytest.LogCaptureFixture) -> set[str]:
    return {
        r.getMessage().split(":")[0]
        for r in caplog.records
        if "skipped, unchanged" in r.getMessage()
    }


@pytest.mark.slow
def test_a_noop_rerun_skips_every_stage_and_a_change_reruns_what_reads_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    assert run_study(make_config(rw_study(out))) == 0
    assert skipped(caplog) == set()
    forecasts = (out / "forecasts/all.parquet").read_bytes()
    train = (out / "train/rw.parquet").read_bytes()

    caplog.clear()
    assert run_study(make_config(rw_study(out))) == 0
    assert skipped(caplog) == {"prepare", "train@rw", "assemble"}
    assert (out / "forecasts/all.parquet").read_bytes() == forecasts
    # the run's stage record holds no probe of an earlier run (results, benchmarks read it)
    assert {s: t["status"] for s, t in read_timings(out).items()} == dict.fromkeys(
        ["prepare", "probe", "train@rw", "assemble"], "skipped"
    )

    # a cache shard rewritten in place (same bytes, new mtime): train runs and loads it all;
    # its table keeps the same bytes and mtime, so assemble stays skipped
    shard = sorted(FitCache(out / "models", "rw").shards.glob("*.npz"))[0]
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    assert run_study(make_config(rw_study(out))) == 0
    assert skipped(caplog) == {"prepare", "assemble"}
    assert any("0 trained, 96 loaded" in r.getMessage() for r in caplog.records)
    assert (out / "train/rw.parquet").read_bytes() == train

    # an assemble-only param and an output removed: assemble runs, train stays skipped;
    # retrain_if_exists never skips train
    (out / "forecasts/all.parquet").unlink()
    d = rw_study(out, mcs_reps=30)
    d["runtime"]["retrain_if_exists"] = True
    caplog.clear()
    assert run_study(make_config(d)) == 0
    assert skipped(caplog) == {"prepare"}
    assert (out / "forecasts/all.parquet").exists()
    caplog.clear()
    assert run_study(make_config(rw_study(out, mcs_reps=30))) == 0
    assert skipped(caplog) == {"prepare", "train@rw", "assemble"}


def test_verify_checks_every_shard_on_demand_and_heals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from pipeline.cli import main

    cache = FitCache(tmp_path / "models", "rw")
    for s in range(3):
        cache.write_shard({f"k{s}{i}": {"pred": np.full((1, 1, 3), float(i))} for i in range(4)})
    assert main(["verify", "--output-dir", str(tmp_path)]) == 0
    assert "rw: 12 fits checked, ok" in capsys.readouterr().out
    shard = sorted(cache.shards.glob("*.npz"))[1]
    shard.write_bytes(shard.read_bytes()[:80])  # truncated
    assert main(["verify", "--output-dir", str(tmp_path)]) == 1
    assert "1 damaged shards moved aside, 4 fits to refit" in capsys.readouterr().out
    assert (tmp_path / "models/rw/damaged" / shard.name).exists()
    assert main(["verify", "--output-dir", str(tmp_path)]) == 0
