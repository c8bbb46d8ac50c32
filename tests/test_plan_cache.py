"""runtime/fits/plan_cache.py: a model's fits and keys kept on disk between the stages' processes
give the groups a fresh build gives, and a changed input, a damaged entry or another model
never reuses a plan."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_STUDY, make_config
from test_tasks import PANEL, time_panel

from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits import plan_cache, shared_plan
from pipeline.runtime.fits.fit_groups import FitGroup, build_groups

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "plans"
    monkeypatch.setenv(plan_cache.ENV_VAR, str(path))
    return path


def _same(a: list[FitGroup], b: list[FitGroup]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.model, x.horizon, x.horizons) == (y.model, y.horizon, y.horizons)
        for name in ("keys", "country", "origin", "countries", "rows"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
        assert (x.slot is None) == (y.slot is None)
        if x.slot is not None:
            np.testing.assert_array_equal(x.slot, y.slot)
        every = np.arange(len(x))
        for k, v in x.take(every).items():
            np.testing.assert_array_equal(v, y.take(every)[k])


@pytest.mark.parametrize("model", ["ar_qr", "rw", "lqr"])
def test_a_kept_plan_gives_the_groups_a_build_gives(plans: Path, model: str) -> None:
    config = make_config(copy.deepcopy(SMALL_STUDY))
    adapter = adapter_for(config, model)
    built = build_groups(PANEL, config, adapter)
    first = shared_plan.fit_groups(PANEL, config, adapter)  # built, then kept
    assert len(list(plans.glob("*.npz"))) == 1
    loaded = shared_plan.fit_groups(PANEL, config, adapter)  # from the entry
    _same(first, built)
    _same(loaded, built)


def test_changed_inputs_name_another_plan_and_damage_is_rebuilt(
    plans: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = copy.deepcopy(SMALL_STUDY)
    config = make_config(base)
    adapter = adapter_for(config, "ar_qr")
    shared_plan.fit_groups(PANEL, config, adapter)
    other_panel = time_panel(
        {"AA": ("2014-01-01", "2019-12-01"), "BB": ("2016-07-01", "2019-12-01")}
    )
    _same(
        shared_plan.fit_groups(other_panel, config, adapter),
        build_groups(other_panel, config, adapter),
    )
    changed = copy.deepcopy(base)
    changed["seed"] = int(changed.get("seed", 0)) + 1
    other_config = make_config(changed)
    _same(
        shared_plan.fit_groups(PANEL, other_config, adapter),
        build_groups(PANEL, other_config, adapter),
    )
    assert len(list(plans.glob("*.npz"))) == 3
    # the code that builds the groups is part of the name
    monkeypatch.setattr(plan_cache, "SOURCES", ("pipeline.runtime.fits.fit_groups",))
    shared_plan.fit_groups(PANEL, config, adapter)
    assert len(list(plans.glob("*.npz"))) == 4
    monkeypatch.undo()
    monkeypatch.setenv(plan_cache.ENV_VAR, str(plans))
    # damage: flipped bytes inside the arrays fail the checksum; the entry is rebuilt. The
    # groups' parts and the basis have a checksum each: `load` (the parts alone) checks the
    # parts', `load_entry` (what the next plan's keys reuse) both
    entry = max(plans.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    name, intact = entry.stem, entry.read_bytes()
    assert plan_cache.load(name) is not None and plan_cache.load_entry(name) is not None
    with np.load(entry) as data:
        keys, lead = data["0_keys"].tobytes(), data["0_lead"].tobytes()
    for member, check in ((keys, plan_cache.load), (lead, plan_cache.load_entry)):
        at = intact.find(member[:64])
        assert at > 0
        raw = bytearray(intact)
        raw[at : at + 64] = bytes(64)
        entry.write_bytes(bytes(raw))
        if member is lead:  # the parts alone are intact: still loaded
            assert plan_cache.load(name) is not None
        assert check(name) is None and not entry.exists()


def test_the_cache_keeps_the_most_recently_used_entries(
    plans: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_cache, "KEEP", 2)
    part = (np.zeros(1, np.int64), np.ones(1, np.int64), np.array(["ab" * 32], dtype=object))
    for name in ("a", "b", "c"):
        plan_cache.save(name, [part])
    assert sorted(p.stem for p in plans.glob("*.npz")) == ["b", "c"]
    (loaded,) = plan_cache.load("b") or []
    assert loaded[2].tobytes().hex() == "ab" * 32  # kept and loaded as raw digests
    # and at most KEEP_BYTES in all, the newest entry whatever its size
    monkeypatch.setattr(plan_cache, "KEEP_BYTES", (plans / "b.npz").stat().st_size)
    os.utime(plans / "c.npz", (1, 1))
    plan_cache.save("e", [part])
    assert sorted(p.stem for p in plans.glob("*.npz")) == ["e"]
    monkeypatch.setattr(plan_cache, "KEEP_BYTES", 1)
    plan_cache.save("f", [part])
    assert sorted(p.stem for p in plans.glob("*.npz")) == ["f"]
    # an unwritable cache only costs time
    blocker = plans.parent / "file"
    blocker.write_text("")
    monkeypatch.setenv(plan_cache.ENV_VAR, str(blocker / "plans"))
    plan_cache.save("d", [part])
    assert plan_cache.load("d") is None


def test_a_stage_process_reuses_the_plan_another_kept(plans: Path, tmp_path: Path) -> None:
    """Two processes (as two DVC stages): the second loads what the first built."""
    script = (
        "import copy, sys, time; sys.path.insert(0, 'tests');"
        "from conftest import SMALL_STUDY, make_config; from test_tasks import PANEL;"
        "from pipeline.models.plugins.registry import adapter_for;"
        "from pipeline.runtime.fits import plan_cache, shared_plan;"
        "c = make_config(copy.deepcopy(SMALL_STUDY)); seen = [];"
        "load = plan_cache.load; plan_cache.load = lambda n: seen.append(load(n)) or seen[-1];"
        "g = shared_plan.fit_groups(PANEL, c, adapter_for(c, 'ar_qr'));"
        "print(seen[-1] is not None, ''.join(k for x in g for k in x.keys)[-16:])"
    )
    env = {"PYTHONPATH": str(ROOT), plan_cache.ENV_VAR: str(plans), "PATH": "/usr/bin:/bin"}
    out = [
        subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert out[0][0] == "False" and out[1][0] == "True", out
    assert out[0][1] == out[1][1]


def test_a_pooled_model_is_built_not_kept(plans: Path) -> None:
    """A panel model's windows are its plan: nothing smaller to keep, so nothing is written."""
    config = make_config(copy.deepcopy(SMALL_STUDY))
    adapter = adapter_for(config, "ensemble_nn")
    assert adapter.pooled
    _same(shared_plan.fit_groups(PANEL, config, adapter), build_groups(PANEL, config, adapter))
    assert not list(plans.glob("*.npz"))


def test_every_fits_module_the_plan_is_built_from_names_the_entry() -> None:
    """A kept plan is named by the code of every module of runtime/fits/ that build_groups
    reads (an edit to one of them must not reuse a plan made by the old code)."""
    import ast

    package = "pipeline.runtime.fits"
    seen, todo = set(), ["fit_groups"]
    while todo:
        name = todo.pop()
        seen.add(name)
        tree = ast.parse((ROOT / "pipeline/runtime/fits" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
                child = node.module.rsplit(".", 1)[1]
                if child not in seen:
                    todo.append(child)
    assert {f"{package}.{m}" for m in seen} <= set(plan_cache.SOURCES)
    assert f"{package}.country_keys" in plan_cache.SOURCES
