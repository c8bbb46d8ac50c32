"""A task payload's `countries` from the group's distinct names (tasks.CountryText) equals the
per-fit `group.countries[index].astype(str)` it replaces: the same dtype (as wide as the
task's longest name, which the worker's shard stores) and the same bytes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import SMALL_STUDY, make_config
from test_tasks import time_panel

from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.tasks import CountryText, task_payload

# names of different lengths: a task of short names only gets a narrower dtype
SPANS = {
    "A": ("2013-01-01", "2019-12-01"),
    "BBBB": ("2014-06-01", "2019-12-01"),
    "CC": ("2013-03-01", "2019-12-01"),
    "DDDDDDD": ("2015-01-01", "2019-12-01"),
}


@pytest.mark.parametrize("model", ["rw", "ar_qr", "ensemble_nn"])
def test_country_text_is_the_per_fit_conversion(model: str) -> None:
    d = copy.deepcopy(SMALL_STUDY)
    d["models"].setdefault(model, {})["enabled"] = True
    config = make_config(d)
    groups = build_groups(time_panel(SPANS), config, adapter_for(config, model))
    rng = np.random.default_rng(0)
    widths = set()
    for g in groups:
        text = CountryText(g)
        picks = [np.arange(len(g)), np.zeros(0, np.int64), np.arange(len(g))[::-3]]
        picks += [np.sort(rng.choice(len(g), size=k, replace=False)) for k in (1, 2, 5)]
        picks += [np.nonzero(g.countries[:, 0] == name)[0] for name in ("A", "CC")]
        for index in picks:
            want = g.countries[index].astype(str)
            got = text(index)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()
            widths.add(want.dtype.itemsize)
        payload = task_payload(g, picks[-1], params={}, quantiles=[0.5], seed=0, countries=text)
        default = task_payload(g, picks[-1], params={}, quantiles=[0.5], seed=0)
        assert payload["countries"].dtype == default["countries"].dtype
        assert np.array_equal(payload["countries"], default["countries"])
    if model != "ensemble_nn":  # per-country fits: a task of one short name is narrower
        assert len(widths) > 1
