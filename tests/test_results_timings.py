"""The results page's stage times come from the run that did each stage's work: a no-op rerun
(every stage skipped in ~0 s) keeps the earlier run's figures and says it skipped them; a run
that redoes one stage shows that stage's new time and the others' old. A damaged or older
logs/timings.json never breaks `python -m pipeline results`."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
from conftest import SMALL_STUDY, make_config

from pipeline.cli import main
from pipeline.models.plugins import registry
from pipeline.runner import run_study
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.store.timings import TIMINGS_FILE, read_timings, record_stage


def two_model_study(out: Path) -> dict:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(out)
    d["runtime"]["in_process_below_s"] = 1e9  # the benchmarks in the driver: no cluster here
    d["models"] = registry.only_entries("climatology", "rw")
    d["evaluation"] = {"combo": {"enabled": False}, "mcs_reps": 20}
    return d


def page_times(out: Path, doc: Path) -> tuple[str, dict[str, tuple[str, str, str]]]:
    """The page's cost section and its rows: stage -> (seconds, status, run)."""
    assert main(["results", "--output-dir", str(out), "--out", str(doc)]) == 0
    section = doc.read_text().split("## Wall time per stage")[1].split("## Memory")[0]
    rows = re.findall(r"^\| ([\w@]+) \| ([\d.]+) \| (\w+) \| ([^|]+) \|$", section, re.M)
    return section, {stage: (s, status, run.strip()) for stage, s, status, run in rows}


@pytest.mark.slow
def test_a_noop_rerun_keeps_the_first_runs_times_and_a_refit_shows_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, doc = tmp_path / "out", tmp_path / "RESULTS.md"
    assert run_study(make_config(two_model_study(out))) == 0
    first = read_timings(out)
    stages = ["prepare", "probe", "train@climatology", "train@rw", "assemble"]
    assert sorted(first) == sorted(stages)
    assert {t["status"] for t in first.values()} == {"ok"}
    assert len({t["run"] for t in first.values()}) == 1  # one run, told by its start
    _, shown = page_times(out, doc)
    assert shown == {s: (f"{first[s]['seconds']:.1f}", "ok", shown["prepare"][2]) for s in stages}

    # the no-op rerun: its own line says skipped; the page keeps the first run's figures
    assert run_study(make_config(two_model_study(out))) == 0
    second = read_timings(out)
    assert {t["status"] for t in second.values()} == {"skipped"}
    assert {s: t["worked"] for s, t in second.items()} == first
    section, noop = page_times(out, doc)
    assert noop == shown
    assert float(noop["assemble"][0]) > 0 and sum(float(t["seconds"]) for t in second.values()) < (
        sum(float(t["seconds"]) for t in first.values())
    )
    assert f"Every figure below comes from the run started {shown['prepare'][2]}." in section
    assert (
        "found `prepare`, `probe`, `train@climatology`, `train@rw` and `assemble` unchanged and skipped them"
        in section
    )

    # a third run redoes train@climatology (a cache shard rewritten: train verifies it) and
    # so probes; prepare, train@rw and assemble (the same table bytes) stay skipped
    shard = sorted(FitCache(out / "models", "climatology").shards.glob("*.npz"))[0]
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert run_study(make_config(two_model_study(out))) == 0
    third = read_timings(out)
    assert {s: t["status"] for s, t in third.items()} == {
        "prepare": "skipped",
        "probe": "ok",
        "train@climatology": "ok",
        "train@rw": "skipped",
        "assemble": "skipped",
    }
    section, refit = page_times(out, doc)
    for stage in ["probe", "train@climatology"]:  # the third run's own figures
        assert refit[stage] == (f"{third[stage]['seconds']:.1f}", "ok", refit[stage][2])
        assert third[stage]["run"] == third["prepare"]["run"] != first["prepare"]["run"]
    for stage in ["prepare", "train@rw", "assemble"]:  # the first run's
        assert refit[stage] == shown[stage]
    assert refit["probe"][2] != shown["probe"][2]
    assert "Each stage's figure comes from the last run that did its work" in section
    assert "found `prepare`, `train@rw` and `assemble` unchanged and skipped them" in section

    # an older qpipe's file (no run times) and a torn one: the page is still written
    timings = out / TIMINGS_FILE
    timings.write_text(json.dumps({s: {"seconds": 1.0, "status": "ok"} for s in stages}))
    section, old = page_times(out, doc)
    assert old["assemble"] == ("1.0", "ok", "(not recorded)") and "was not recorded" in section
    timings.write_text('{"prepare": {"seconds": 0.1')
    section, torn = page_times(out, doc)
    assert torn == {} and "No timings recorded" in section


def test_damaged_or_old_timings_never_break_the_page(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = out / TIMINGS_FILE
    path.parent.mkdir(parents=True)
    # an older qpipe's file: stages without run, at or worked, read as they are
    old = {
        "prepare": {"seconds": 1.5, "status": "ok"},
        "assemble": {"seconds": 0.0, "status": "skipped"},
    }
    path.write_text(json.dumps(old))
    assert read_timings(out) == old
    # a damaged entry is left out, a damaged "worked" dropped, the rest kept
    path.write_text(
        json.dumps(
            {
                "prepare": {"seconds": "fast", "status": "ok"},
                "probe": [1, 2],
                "train@rw": {"seconds": 0.0, "status": "skipped", "worked": {"seconds": None}},
                "assemble": {"seconds": 2.0, "status": "ok", "run": 7},
            }
        )
    )
    assert read_timings(out) == {"train@rw": {"seconds": 0.0, "status": "skipped"}}
    # the next record rebuilds the file; an older run's skipped entry carries no work
    record_stage(out, "prepare", 0.0, "skipped")
    assert "worked" not in read_timings(out)["prepare"]
    for text in ['{"prepare": {"seconds": 0.1', "[]", "\xff\xfe"]:
        path.write_bytes(text.encode("latin-1"))
        assert read_timings(out) == {}
        record_stage(out, "prepare", 2.0)  # rebuilt, readable
        assert read_timings(out)["prepare"]["seconds"] == 2.0
