"""A task's payload built from views of its group's arrays (a run of consecutive fits: the
usual task) and its windows' rows found without a sort carry exactly what the per-fit copies
did (issue 18 item 7: the driver's cost per task)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import SMALL_STUDY, make_config
from test_payload_countries import SPANS
from test_tasks import time_panel

from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.fit_windows import CountryWindows, positions
from pipeline.runtime.fits.tasks import CountryText, task_payload, with_data


def test_positions_are_a_slice_only_for_one_run_of_consecutive_fits() -> None:
    assert positions(np.arange(3, 9)) == slice(3, 9)
    assert positions(np.array([4])) == slice(4, 5)
    for index in ([], [0, 2], [3, 2, 1], [0, 1, 1, 2], [2, 1, 3]):  # no run: as they are
        at = positions(np.array(index, dtype=np.int64))
        assert isinstance(at, np.ndarray) and at.tolist() == index


def _expected(g, index: np.ndarray) -> dict[str, np.ndarray]:
    """The payload's per-fit arrays as the copies before (fancy indexing, np.unique)."""
    out = {
        "keys": g.key_bytes()[index],
        "countries": g.countries[index].astype(str),
        "rows": g.rows[index],
        "origins": g.origin[index].astype(np.int64),
    }
    if isinstance(g.data, CountryWindows):
        w = g.data
        rows, inverse = np.unique(w.country[index], return_inverse=True)
        out["windows.country"] = inverse.reshape(-1).astype(np.int64)
        out["windows.rows"] = w.values()[rows]  # the columns the fits read (w.columns)
    return out


@pytest.mark.parametrize("model", ["rw", "ar_qr", "ensemble_nn"])
def test_a_payload_of_views_carries_what_the_copies_did(model: str) -> None:
    d = copy.deepcopy(SMALL_STUDY)
    d["models"].setdefault(model, {})["enabled"] = True
    config = make_config(d)
    groups = build_groups(time_panel(SPANS), config, adapter_for(config, model))
    rng = np.random.default_rng(0)
    for g in groups:
        F = len(g)
        picks = [np.arange(F), np.arange(F // 3, F - 1), np.arange(1), np.zeros(0, np.int64)]
        picks += [np.sort(rng.choice(F, size=min(F, 5), replace=False)), np.arange(F)[::-2]]
        for index in picks:
            for countries in (None, CountryText(g)):
                got = task_payload(
                    g, index, params={}, quantiles=[0.5], seed=0, compact=True, countries=countries
                )
                want = _expected(g, index)
                for name in ("keys", "countries", "rows", "origins"):
                    assert got[name].dtype == want[name].dtype, name
                    assert got[name].tobytes() == want[name].tobytes(), name
                if "windows" in got:
                    part = got["windows"]
                    assert part["country"].dtype == np.int64
                    assert np.array_equal(part["country"], want["windows.country"])
                    lo = int(part["m0"]) - g.data.m0
                    span = want["windows.rows"][:, lo : lo + part["grid"].shape[1]]
                    assert np.array_equal(part["grid"], span, equal_nan=True)
                    # and the worker's data from it is the fits' own windows
                    data = with_data(got)["data"]
                    for name, array in g.data.take(index).items():
                        assert np.array_equal(data[name], array, equal_nan=True), name
