"""runtime/fits/key_reuse.py: a plan built on a previous plan's basis (the monthly update)
equals a plan built from scratch, bit for bit, and hashes only the fits whose bytes changed;
a revised past value gives a new key to exactly the fits whose window reads it."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_STUDY, make_config
from test_tasks import PANEL

from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits import country_keys, plan_cache, shared_plan
from pipeline.runtime.fits.country_keys import country_fit_keys
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.key_reuse import PlanBasis, previous_fits
from pipeline.runtime.fits.keys import country_digests, key_prefix


class CountingSha256:
    """hashlib.sha256 that counts its calls (country_keys': one per fit hashed, not reused)."""

    def __init__(self) -> None:
        self.calls = 0
        self.sha256 = self  # stands for the hashlib module inside country_keys

    def __call__(self, *args: object) -> object:
        self.calls += 1
        return hashlib.sha256(*args)  # type: ignore[arg-type]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> CountingSha256:
    counter = CountingSha256()
    monkeypatch.setattr(country_keys, "hashlib", counter)
    return counter


def _grid(rng: np.random.Generator, C: int, M: int, p: int) -> np.ndarray:
    grid = rng.normal(size=(C, M, p + 1))
    grid[rng.random(grid.shape) < 0.06] = np.nan
    grid[rng.random(grid.shape) < 0.03] = -np.nan  # another NaN's bits: canonical in a key
    return grid


def _keys(grid, countries, m0, org, size, h, p, min_rows, prefix, slots, previous=None):  # type: ignore[no-untyped-def]
    cdig = country_digests(countries)
    return country_fit_keys(grid, m0, org, size, h, p, min_rows, prefix, cdig, slots, previous)


@pytest.mark.parametrize("seed", range(6))
def test_reused_keys_equal_a_fresh_build_bit_for_bit(seed: int, counted: CountingSha256) -> None:
    """Old study -> new study: countries added and removed, the grid starting later or earlier
    and ending later, more origins, a revised value mid-history, NaN made a number and back,
    -0.0 for 0.0, slots: the keys made with the old plan's basis are the fresh keys."""
    rng = np.random.default_rng(seed)
    p, size, h = int(rng.integers(1, 4)), 12, int(rng.integers(1, 4))
    min_rows = int(rng.integers(1, 10))
    old_countries = ["AT", "BE", "CZ", "DE", "EE"]
    new_countries = ["AT", "BE", "DE", "EE", "FR"]  # CZ removed, FR added
    M0, m0 = 50, 600
    old = _grid(rng, len(old_countries), M0, p)
    old[:, 20, 0] = 0.0
    # the new grid: the same values for kept countries, 8 months more data, shifted start
    shift = int(rng.integers(-3, 4))
    new_m0, M = m0 + shift, M0 + 8 - shift
    new = np.full((len(new_countries), M, p + 1), np.nan)
    for c, code in enumerate(new_countries):
        if code in old_countries:
            src = old[old_countries.index(code)]
            a = max(0, shift)
            new[c, a - shift : M0 - shift] = src[a:]
        else:
            new[c] = _grid(rng, 1, M, p)[0]
    new[:, M0 - shift :] = _grid(rng, len(new_countries), 8, p)
    revised = (1, 25 - shift)  # BE, mid-history: Eurostat revises data
    new[revised[0], revised[1], 0] = 123.25  # (was NaN or another number)
    new[0, 20 - shift, 0] = -0.0  # the same number, other bytes
    new[3, 30 - shift, -1] = np.nan if np.isfinite(new[3, 30 - shift, -1]) else 1.0
    step = 1 + seed % 2
    old_org = np.arange(m0 + 5, m0 + M0, step, dtype=np.int64)
    new_org = np.arange(m0 + 5, m0 + M0 + 8, step, dtype=np.int64)
    slot_period = 3 if seed % 3 == 0 else 1
    prefix = key_prefix("m", 1, {"a": seed}, [0.1, 0.5], h, seed)

    def slots(org: np.ndarray) -> np.ndarray | None:
        return (org // step) % slot_period if slot_period > 1 else None

    oci, ooi, okeys = _keys(
        old, old_countries, m0, old_org, size, h, p, min_rows, prefix, slots(old_org)
    )
    basis = PlanBasis(
        countries=np.array(old_countries), m0=m0, features=old[..., :p], size=size, step=step,
        prefixes=(prefix,), leads=(old[..., p],), parts=((oci, old_org[ooi], okeys),),
    )  # fmt: skip
    previous = previous_fits(basis, prefix, new_countries, new_org, size, step, slot_period, p)
    assert previous is not None
    counted.calls = 0
    args = (new, new_countries, new_m0, new_org, size, h, p, min_rows, prefix, slots(new_org))
    got = _keys(*args, previous)
    hashed = counted.calls
    want = _keys(*args)
    for a, b in zip(got, want, strict=True):
        assert a.tobytes() == b.tobytes()
    assert 0 < hashed < got[0].size  # most keys reused, some hashed
    # exactly the fits without an unchanged previous key were hashed
    old_key = {
        (old_countries[c], int(old_org[o])): k for c, o, k in zip(oci, ooi, okeys, strict=True)
    }
    new_key = {(new_countries[c], int(new_org[o])): k for c, o, k in zip(*got, strict=True)}
    unchanged = sum(old_key.get(fit) == k for fit, k in new_key.items())
    assert hashed == len(new_key) - unchanged
    # the revision gave a new key to every fit whose window reads it
    month = new_m0 + revised[1]
    readers = [
        (code, T) for (code, T) in new_key
        if code == "BE" and (T - size + 1 <= month <= T - h or month == T) and (code, T) in old_key
    ]  # fmt: skip
    assert readers and all(new_key[f] != old_key[f] for f in readers)


def test_nothing_is_reused_across_prefixes_sizes_or_steps() -> None:
    prefix = key_prefix("m", 1, {}, [0.5], 1, 0)
    part = (np.zeros(1, np.int64), np.array([610]), np.zeros(1, "S32"))
    basis = PlanBasis(
        np.array(["AT"]), 600, np.zeros((1, 20, 2)), 12, 1, (prefix,), (np.zeros((1, 20)),), (part,)
    )
    org = np.arange(605, 625)
    assert previous_fits(basis, prefix, ["AT"], org, 12, 1, 1, 2) is not None
    assert (
        previous_fits(basis, key_prefix("m", 1, {}, [0.5], 2, 0), ["AT"], org, 12, 1, 1, 2) is None
    )
    assert previous_fits(basis, prefix, ["AT"], org, 13, 1, 1, 2) is None
    assert previous_fits(basis, prefix, ["AT"], org, 12, 2, 1, 2) is not None  # no slots
    assert previous_fits(basis, prefix, ["AT"], org, 12, 2, 3, 2) is None  # slots moved
    assert previous_fits(basis, prefix, ["AT"], org, 12, 1, 1, 3) is None
    assert previous_fits(None, prefix, ["AT"], org, 12, 1, 1, 2) is None


def _study(end: str, model: str) -> object:
    d = copy.deepcopy(SMALL_STUDY)
    d["rolling_window"]["end_date"] = end
    return make_config(d)


@pytest.mark.parametrize("model", ["ar_qr", "rw"])
def test_the_monthly_update_of_a_real_plan_reuses_its_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: CountingSha256, model: str
) -> None:
    """A real plan (ar_qr is slotted) with a later end date, then a revised past value, built
    through the plan cache: the groups equal build_groups from scratch, key for key, and only
    the fits that are new or read the revised value are hashed."""
    monkeypatch.setenv(plan_cache.ENV_VAR, str(tmp_path / "plans"))
    first = _study("2018-12-01", model)
    adapter = adapter_for(first, model)
    old = shared_plan.fit_groups(PANEL, first, adapter)
    later = _study("2019-06-01", model)
    counted.calls = 0
    new = shared_plan.fit_groups(PANEL, later, adapter)
    hashed = counted.calls
    fresh = build_groups(PANEL, later, adapter)
    old_keys = {k for g in old for k in g.keys}
    new_fits = 0
    for g, f in zip(new, fresh, strict=True):
        assert g.key_raw.tobytes() == f.key_raw.tobytes()
        np.testing.assert_array_equal(g.origin, f.origin)
        np.testing.assert_array_equal(g.country, f.country)
        new_fits += sum(k not in old_keys for k in g.keys)
    assert 0 < hashed <= new_fits + len(PANEL["COUNTRY"].unique()) * len(new)  # + last origins
    assert hashed < sum(len(g) for g in new) / 2
    # a revision in the middle of the history: a new key for every fit reading it
    revised = PANEL.copy()
    row = revised.index[(revised["COUNTRY"] == "AA") & (revised["TIME"] == "2017-06-01")]
    revised.loc[row, adapter.features(later)[0]] += 0.25  # what a revised y gives a feature
    counted.calls = 0
    got = shared_plan.fit_groups(revised, later, adapter)
    hashed = counted.calls
    fresh_revised = build_groups(revised, later, adapter)
    changed = 0
    for g, f, before in zip(got, fresh_revised, new, strict=True):
        assert g.key_raw.tobytes() == f.key_raw.tobytes()
        changed += int((g.key_raw != before.key_raw).sum())
    assert changed > 0 and hashed == changed


def test_a_plan_of_other_code_is_no_basis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: CountingSha256
) -> None:
    """The basis comes from the newest entry of the same family only: a plan kept by other
    code (or another model) is never read for keys."""
    monkeypatch.setenv(plan_cache.ENV_VAR, str(tmp_path / "plans"))
    first = _study("2018-12-01", "ar_qr")
    shared_plan.fit_groups(PANEL, first, adapter_for(first, "rw"))  # another model's entry
    monkeypatch.setattr(plan_cache, "SOURCES", ("pipeline.runtime.fits.fit_groups",))
    shared_plan.fit_groups(PANEL, first, adapter_for(first, "ar_qr"))  # other code's entry
    monkeypatch.undo()
    monkeypatch.setenv(plan_cache.ENV_VAR, str(tmp_path / "plans"))
    monkeypatch.setattr(country_keys, "hashlib", counted)
    later = _study("2019-06-01", "ar_qr")
    counted.calls = 0
    groups = shared_plan.fit_groups(PANEL, later, adapter_for(later, "ar_qr"))
    assert counted.calls == sum(len(g) for g in groups)  # every key hashed: no basis


@pytest.mark.slow
def test_the_monthly_update_run_equals_a_fresh_run_of_the_later_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` of a finished study after its end date moves on (keys reused from its plan) gives
    the forecasts and tables a run of the later study from nothing gives, byte for byte."""
    from test_incremental import rw_study

    from pipeline.runner import run_study

    def study(out: Path, end: str) -> object:
        d = rw_study(out)
        d["rolling_window"]["end_date"] = end
        return make_config(d)

    monkeypatch.setenv(plan_cache.ENV_VAR, str(tmp_path / "plans"))
    updated = tmp_path / "updated"
    assert run_study(study(updated, "2018-12-01")) == 0
    assert run_study(study(updated, "2019-06-01")) == 0  # the monthly update
    assert len(list((tmp_path / "plans").glob("rw-*.npz"))) == 2
    monkeypatch.setenv(plan_cache.ENV_VAR, str(tmp_path / "fresh-plans"))
    fresh = tmp_path / "fresh"
    assert run_study(study(fresh, "2019-06-01")) == 0
    for name in ("train/rw.parquet", "forecasts/all.parquet", "metrics.json"):
        assert (updated / name).read_bytes() == (fresh / name).read_bytes(), name
