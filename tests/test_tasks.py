"""Fits, content keys, task batching and the worker task function (no cluster)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_STUDY, make_config

from pipeline.data.windows import origins as window_origins
from pipeline.models.plugins.registry import adapter_for, get_adapter
from pipeline.runtime.execute.worker import fit_states, run_task
from pipeline.runtime.fits.country_keys import country_fit_keys
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.fit_windows import country_grid, window_arrays
from pipeline.runtime.fits.keys import bulk_keys, country_digests, key_prefix
from pipeline.runtime.fits.tasks import (
    batched_fits_per_task,
    block_task,
    choose_fits_per_task,
    make_tasks,
    task_payload,
    with_data,
)
from pipeline.schema import lag_column, lead_column, month_index

LAGS = range(0, 4)
HORIZONS = (1, 3)


def time_panel(countries: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """A prepared panel (ARCHITECTURE.md contract) whose values are their own month index.

    y_t = m(t) + 1000 * country number, so every value says which month and country it is.
    """
    frames = []
    for c, (code, (start, end)) in enumerate(sorted(countries.items())):
        months = pd.date_range(start, end, freq="MS")
        m = np.array([month_index(t) for t in months], dtype=np.float64) + 1000.0 * c
        f = pd.DataFrame({"COUNTRY": code, "TIME": months, "y_raw": m, "y": m})
        first = m[0]
        for lag in LAGS:
            f[lag_column("y", lag)] = np.where(m - lag >= first, m - lag, np.nan)
        last = m[-1]
        for h in HORIZONS:
            f[lead_column(h)] = np.where(m + h <= last, m + h, np.nan)
        frames.append(f)
    panel = pd.concat(frames, ignore_index=True)
    panel["COUNTRY"] = panel["COUNTRY"].astype("string")
    return panel


def study(**runtime: Any) -> Any:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update(runtime)
    return make_config(d)


PANEL = time_panel({"AA": ("2014-01-01", "2019-12-01"), "BB": ("2016-06-01", "2019-12-01")})


def test_windows_see_nothing_after_the_origin() -> None:
    config = study()
    (g1, g3) = build_groups(PANEL, config, get_adapter("ar_qr"))
    size = config.rolling_window.size
    for g in (g1, g3):
        h, data = g.horizon, g.take(np.arange(len(g)))
        for i in range(len(g)):
            T = int(g.origin[i]) + 1000.0 * (g.country[i] == "BB")
            live = data["w"][i] > 0
            X, y = data["X"][i][live], data["y"][i][live]
            # features at t are y_t..y_{t-p+1}; targets y_{t+h}: never past the origin
            t = X[:, 0]
            assert np.all(t >= T - size + 1) and np.all(t <= T - h)
            assert np.array_equal(y, t + h) and y.max() <= T
            assert np.array_equal(X[:, 1], t - 1)
            assert data["X_new"][i][0, 0] == T  # forecast-time features are those at T
    # BB starts 2016-06: its early windows are partial (masked rows), never shifted
    bb, w = g1.country == "BB", g1.take(np.arange(len(g1)))["w"]
    assert w[bb].sum(1).min() < w[~bb].sum(1).min()


def test_pooled_windows_mask_targets_past_the_origin() -> None:
    grid = np.arange(40, dtype=np.float64)[None, :, None].repeat(3, axis=2)  # feature, lead1, lead3
    grid[0, :, 1] += 1
    grid[0, :, 2] += 3
    origins = np.array([20, 30])
    arr = window_arrays(grid, 0, origins, size=10, horizons=[1, 3], n_features=1)
    for o, T in enumerate(origins):
        t = arr["X"][0, o, :, 0]
        assert np.array_equal(t, np.arange(T - 9, T))  # rows t = T-9 .. T-1
        y1, y3 = arr["y"][0, o, :, 0], arr["y"][0, o, :, 1]
        assert np.array_equal(y1, t + 1)
        assert np.all(np.isnan(y3[t + 3 > T])) and np.array_equal(y3[t + 3 <= T], t[t + 3 <= T] + 3)


def keys_of(panel: pd.DataFrame, config: Any, model: str) -> dict[tuple[str, int, int], str]:
    out = {}
    for g in build_groups(panel, config, get_adapter(model)):
        for i, k in enumerate(g.keys):
            out[(str(g.country[i]), g.horizon, int(g.origin[i]))] = str(k)
    return out


def test_keys_follow_content_not_the_whole_panel() -> None:
    config = study()
    base = keys_of(PANEL, config, "ar_qr")
    assert len(set(base.values())) == len(base)
    # appending a month of data changes no fit's key
    longer = time_panel({"AA": ("2014-01-01", "2020-01-01"), "BB": ("2016-06-01", "2020-01-01")})
    assert keys_of(longer, config, "ar_qr") == base
    # changing one value changes exactly the keys of fits that read it (BB, month 2017-07)
    edited = PANEL.copy()
    hit = month_index("2017-07-01")
    is_bb = (edited["COUNTRY"] == "BB").to_numpy()
    for col in [c for c in PANEL.columns if c.startswith("y_")]:
        edited.loc[is_bb & np.isclose(edited[col].to_numpy(), hit + 1000.0), col] = -1.0
    changed = {k for k, v in keys_of(edited, config, "ar_qr").items() if base[k] != v}
    assert changed and all(c == "BB" for c, _, _ in changed)
    size = config.rolling_window.size
    for _, h, origin in changed:  # every changed fit's window or forecast row holds that month
        assert origin - size + 1 - max(LAGS) <= hit <= origin + h
    # another model's parameters leave ar_qr's keys alone; ar_qr's own change all of them
    d = copy.deepcopy(SMALL_STUDY)
    d["models"]["lqr"] = {"enabled": True, "alphas": [1.0]}
    assert keys_of(PANEL, make_config(d), "ar_qr") == base
    d["models"]["ar_qr"]["p"] = 2
    assert not set(keys_of(PANEL, make_config(d), "ar_qr").values()) & set(base.values())


def test_tasks_cover_each_fit_once() -> None:
    config = study()
    groups = build_groups(PANEL, config, get_adapter("ar_qr"))
    todo = [np.arange(len(g))[::2] for g in groups]
    tasks = make_tasks(groups, todo, fits_per_task=5)
    seen = [(t.group, int(i)) for t in tasks for i in t.index]
    assert sorted(seen) == sorted((g, int(i)) for g, idx in enumerate(todo) for i in idx)
    assert all(1 <= t.index.size <= 5 for t in tasks)
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert [t.task_id for t in make_tasks(groups, todo, 5)] == [t.task_id for t in tasks]
    with pytest.raises(ValueError, match="fits_per_task"):
        make_tasks(groups, todo, 0)


def test_fits_per_task_targets_task_seconds_but_keeps_workers_busy() -> None:
    assert choose_fits_per_task(0.01, 5.0, 100_000, 2) == 500
    assert choose_fits_per_task(0.01, 5.0, 1_000, 2) == 125  # 4 tasks per worker
    assert choose_fits_per_task(60.0, 5.0, 10, 2) == 1


@pytest.mark.parametrize(
    ("n_fits", "n_workers", "batch", "tasks"),
    [
        (72, 2, 36, 2),
        (72, 2, 18, 4),
        (100, 2, 36, 4),
        (72, 3, 36, 3),
        (10, 2, 36, 2),
        (5, 1, 36, 1),
    ],
)
def test_batched_fits_per_task_gives_workers_equal_tasks_no_larger_than_the_batch(
    n_fits: int, n_workers: int, batch: int, tasks: int
) -> None:
    fpt = batched_fits_per_task(1, n_fits, n_workers, batch)
    sizes = [len(p) for p in np.array_split(np.arange(n_fits), -(-n_fits // fpt))]
    assert len(sizes) == tasks
    assert max(sizes) <= batch  # the probe measured a task of `batch` fits: peak is an upper bound
    assert max(sizes) - min(sizes) <= 1
    # time-based sizing above the batch, or a model that does not batch, is left alone
    assert batched_fits_per_task(500, n_fits, n_workers, batch) == 500
    assert batched_fits_per_task(3, n_fits, n_workers, 1) == 3
    with pytest.raises(ValueError, match="batch_fits"):
        batched_fits_per_task(1, n_fits, n_workers, 0)


def test_run_task_isolates_a_failing_fit(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL_COUNTRIES", "BB")
    config = study()
    (g1, _) = build_groups(PANEL, config, get_adapter("fake_fail"))
    idx = np.arange(len(g1))
    payload = task_payload(g1, idx, params={}, quantiles=config.data.quantiles, seed=0)
    out = run_task(payload)
    bad = {str(k) for k, c in zip(g1.keys, g1.country, strict=True) if c == "BB"}
    assert {f["key"] for f in out["failed"]} == bad
    assert all(
        "injected failure" in f["traceback"] and f["error_type"] == "ValueError"
        for f in out["failed"]
    )
    # results name fits by position in the payload; failures by position and key
    assert {str(g1.keys[f["index"]]) for f in out["failed"]} == bad
    assert set(g1.keys[out["index"]]) == {str(k) for k in g1.keys} - bad
    assert out["pred"].shape == (len(out["index"]), 1, 1, 3)
    # the worker writes nothing: results come back as plain arrays (the driver writes the cache)
    assert not any(tmp_path.iterdir())
    assert len(fit_states(out)) == len(out["index"])
    for i, pred in zip(out["index"].tolist(), out["pred"], strict=True):
        # the fake model's forecast is the empirical quantile of the window's targets
        d = g1.take(np.array([i]))
        y = d["y"][0][d["w"][0] > 0]
        assert np.allclose(pred[0, 0], np.quantile(y, config.data.quantiles))


def test_a_non_finite_forecast_fails_only_its_fit_without_resolving(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NAN_COUNTRIES", "AA")
    config = study()
    (g1, _) = build_groups(PANEL, config, get_adapter("fake_quantile"))
    payload = task_payload(
        g1,
        np.arange(len(g1)),
        params={},
        quantiles=config.data.quantiles,
        seed=0,
    )
    import fake_models

    calls = fake_models.CALLS["fit_batch"]
    out = run_task(payload)
    assert fake_models.CALLS["fit_batch"] == calls + 1  # one batched call, no bisection
    bad = {str(k) for k, c in zip(g1.keys, g1.country, strict=True) if c == "AA"}
    assert {f["key"] for f in out["failed"]} == bad
    assert {f["error_type"] for f in out["failed"]} == {"FloatingPointError"}
    assert set(g1.keys[out["index"]]) == {str(k) for k in g1.keys} - bad
    assert np.isfinite(out["pred"]).all()


def test_batched_network_blocks_are_fixed_by_the_study_not_by_what_is_left():
    """ensemble_nn fits train in blocks of study origins dealt round-robin (so every block
    spans the study and blocks cost about the same): a resumed run rebuilds the same blocks
    (so it equals an uninterrupted run), and one more origin at the end changes only the
    keys of the block that gains it."""
    d = copy.deepcopy(SMALL_STUDY)
    d["models"]["ensemble_nn"] = {"enabled": True}
    d["rolling_window"].update(start_date="2016-01-01", end_date="2019-06-01")  # 42 origins
    adapter = adapter_for(make_config(d), "ensemble_nn")
    b = adapter.batch_fits  # models.ensemble_nn.block_origins
    assert b == make_config(d).models.ensemble_nn.block_origins
    (group,) = build_groups(PANEL, make_config(d), adapter)
    n = len(group)
    n_blocks = -(-n // b)
    assert n == 42 and 1 < b < n and n_blocks == 2 and group.block is not None
    assert (group.block == np.argsort(np.argsort(group.origin)) % n_blocks).all()
    everything = make_tasks([group], [np.arange(n)], fits_per_task=1)
    assert [len(t.index) for t in everything] == [21, 21]
    assert all(t.want is None for t in everything)
    # a resumed run with part of each block done: each block trains whole (so its fits give
    # the bits of an uninterrupted run) and the task wants only what is left
    left = np.arange(18, n)
    resumed = make_tasks([group], [left], fits_per_task=1)
    assert [len(t.index) for t in resumed] == [21, 21]
    assert [len(t.wanted) for t in resumed] == [12, 12]
    assert all(len(set(group.block[t.index].tolist())) == 1 for t in resumed)
    # a retried fit trains in its own block
    retry = block_task([group], resumed[0], 0, 3, "r")
    assert np.array_equal(retry.index, np.nonzero(group.block == group.block[3])[0])
    assert retry.wanted.tolist() == [3]
    # blocks count origins, not months: with step=3 the rule is the same by origin index
    d3 = copy.deepcopy(d)
    d3["rolling_window"].update(step=3, start_date="2010-01-01")
    (g3,) = build_groups(PANEL, make_config(d3), adapter)
    from pipeline.data.windows import origins as window_origins

    org = np.array([month_index(o) for o in window_origins(make_config(d3).rolling_window)])
    assert (g3.block == np.searchsorted(org, g3.origin) % -(-org.size // b)).all()
    # one more origin at the end (still 2 blocks): only the keys of the block gaining it change
    d["rolling_window"]["end_date"] = "2019-07-01"
    (longer,) = build_groups(PANEL, make_config(d), adapter)
    assert longer.block[-1] == 0
    assert set(longer.keys) & set(group.keys) == set(group.keys[group.block == 1])
    # the block size is a study parameter: other blocks, other keys
    d["models"]["ensemble_nn"]["block_origins"] = 10
    small = adapter_for(make_config(d), "ensemble_nn")
    (tens,) = build_groups(PANEL, make_config(d), small)
    assert small.batch_fits == 10 and np.bincount(tens.block).tolist() == [9, 9, 9, 8, 8]
    assert not set(tens.keys) & set(longer.keys)


def test_a_slotted_fit_gives_the_same_bits_in_any_batch() -> None:
    """ar_qr's LP arithmetic follows a fit's batch position modulo its slot period (SIMD
    alignment; visible with 12 lags); the worker places every fit at its keyed slot, so a
    full task, a bisected half, a retry alone and a resumed remainder give the same bits."""
    adapter = get_adapter("ar_qr")
    assert adapter.slot_period > 1
    rng = np.random.default_rng(0)
    B, n, p = 40, 48, 12
    X = rng.normal(size=(B, n, p))
    y = X @ rng.normal(size=p) + rng.standard_t(3, size=(B, n))
    w = np.ones((B, n))
    w[::3, :10] = 0.0
    payload = {
        "model": "ar_qr", "horizon": 1, "horizons": [1], "params": {"p": p},
        "quantiles": [0.1, 0.5, 0.9], "seed": 0, "keys": [f"k{i:02d}" for i in range(B)],
        "countries": np.full((B, 1), "AA", dtype=object), "rows": np.ones((B, 1), dtype=bool),
        "origins": np.arange(B, dtype=np.int64) + 24000,
        "data": {"X": X, "y": y, "w": w, "X_new": rng.normal(size=(B, 1, p))},
        "slots": [int(o) % adapter.slot_period for o in np.arange(B) + 24000],
    }  # fmt: skip

    def run(idx: np.ndarray) -> dict[str, Any]:
        sub = {**payload, "keys": [payload["keys"][i] for i in idx]}
        sub.update({k: payload[k][idx] for k in ("countries", "rows", "origins")})
        sub["data"] = {k: v[idx] for k, v in payload["data"].items()}
        sub["slots"] = [payload["slots"][i] for i in idx]
        out = run_task(sub)
        assert not out["failed"]
        keys = [sub["keys"][i] for i in out["index"].tolist()]
        return {k: (p, s) for k, p, s in zip(keys, out["pred"], fit_states(out), strict=True)}

    full = run(np.arange(B))
    parts = [
        np.arange(3, 17),
        np.array([5]),
        np.array([8]),
        np.sort(rng.choice(B, 11, replace=False)),
    ]
    for idx in parts:
        for key, (pred, state) in run(idx).items():
            assert pred.tobytes() == full[key][0].tobytes(), key
            assert all(v.tobytes() == full[key][1][n].tobytes() for n, v in state.items()), key


@pytest.mark.parametrize("solver", ["huberized", "exact"])
def test_an_lqr_fit_gives_the_same_bits_in_any_batch(solver: str) -> None:
    """lqr's kernel solves each active-row count on its own, pads every Newton system to
    64-byte aligned rows and avoids GEMMs whose kernel depends on the batch size, so a fit's
    forecasts and state do not depend on which fits share its batch (a full task, a bisected
    half, a retry alone, a resumed remainder): one key, one result. Windows with gaps give
    odd row counts (the case where MKL's triangular solves followed memory alignment)."""
    rng = np.random.default_rng(1)
    B, n, p = 37, 60, 13
    X = rng.normal(size=(B, n, p)).cumsum(1) * 0.3
    y = 0.8 * X[..., 0] + rng.standard_t(5, size=(B, n))
    w = np.ones((B, n))
    for i in range(B):
        w[i, : rng.integers(0, 14)] = 0.0  # late starters: 47..60 rows
    params = {
        "alphas": [7.5, 15.0, 35.0], "solver": solver, "rff_features": 64,
        "rff_bandwidth": "auto", "validation_size": 12, "penalize_first_lag": True,
        "lags": list(range(1, p)),
    }  # fmt: skip
    payload = {
        "model": "lqr", "horizon": 1, "horizons": [1], "params": params,
        "quantiles": [0.1, 0.5, 0.9], "seed": 0, "keys": [f"k{i:02d}" for i in range(B)],
        "countries": np.full((B, 1), "AA", dtype=object), "rows": np.ones((B, 1), dtype=bool),
        "origins": np.arange(B, dtype=np.int64) + 24000,
        "data": {"X": X, "y": y, "w": w, "X_new": rng.normal(size=(B, 1, p))}, "slots": None,
    }  # fmt: skip

    def run(idx: np.ndarray) -> dict[str, Any]:
        sub = {**payload, "keys": [payload["keys"][i] for i in idx]}
        sub.update({k: payload[k][idx] for k in ("countries", "rows", "origins")})
        sub["data"] = {k: v[idx] for k, v in payload["data"].items()}
        out = run_task(sub)
        assert not out["failed"]
        keys = [sub["keys"][i] for i in out["index"].tolist()]
        return {k: (p, s) for k, p, s in zip(keys, out["pred"], fit_states(out), strict=True)}

    full = run(np.arange(B))
    parts = [np.arange(3, 17), np.array([5]), np.array([30]), np.sort(rng.choice(B, 11, False))]
    for idx in [*parts, np.arange(B)[::-1]]:
        for key, (pred, state) in run(idx).items():
            assert pred.tobytes() == full[key][0].tobytes(), key
            assert all(v.tobytes() == full[key][1][n].tobytes() for n, v in state.items()), key


def test_a_failing_block_fails_whole_instead_of_training_in_parts(
    fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fit of a fixed block (ensemble_nn) gives its key's bits only when trained with its
    whole block, so a failing blocked batch is not bisected: every fit of it fails with the
    error (named as the block's) and is retried with its block."""
    monkeypatch.setenv("FAKE_FAIL_COUNTRIES", "BB")
    config = study()
    (g1, _) = build_groups(PANEL, config, get_adapter("fake_fail"))
    payload = task_payload(
        g1, np.arange(len(g1)), params={}, quantiles=config.data.quantiles, seed=0
    )
    import fake_models

    calls = fake_models.CALLS["fit_batch"]
    out = run_task({**payload, "blocked": True})
    assert fake_models.CALLS["fit_batch"] == calls  # the failing call, no bisected ones
    assert out["index"].size == 0 and {f["key"] for f in out["failed"]} == set(g1.keys)
    assert all(
        f["error_type"] == "ValueError"
        and f["message"].startswith(f"in its block of {len(g1)} fits: injected failure")
        for f in out["failed"]
    )


def test_country_windows_built_per_task_equal_the_stacked_windows() -> None:
    """Per-country fits keep only (country, origin) and build their windows per task from the
    country grid; the values are those of window_arrays' stacked windows, bit for bit."""
    config = study()
    for g in build_groups(PANEL, config, get_adapter("ar_qr")):
        cols = [*get_adapter("ar_qr").features(config), lead_column(g.horizon)]
        countries = sorted(PANEL["COUNTRY"].unique())
        _, m0, grid = country_grid(PANEL, cols)
        org = np.unique(g.origin)
        arr = window_arrays(grid, m0, org, config.rolling_window.size, [g.horizon], len(cols) - 1)
        ci = np.array([countries.index(c) for c in g.country])
        oi = np.searchsorted(org, g.origin)
        idx = np.random.default_rng(0).permutation(len(g))[:25]
        got = g.take(idx)
        want = {
            "X": arr["X"][ci, oi][idx], "y": arr["y"][ci, oi][idx][..., 0],
            "w": arr["w"][ci, oi][idx], "X_new": arr["X_new"][ci, oi][idx][:, None, :],
        }  # fmt: skip
        for name, value in want.items():
            assert got[name].tobytes() == value.tobytes(), name
            assert g.fit_shapes()[name] == (value.shape[1:], value.dtype.str)


def test_a_compact_payload_gives_the_worker_the_same_windows_and_results() -> None:
    """A task sent to a worker carries the grid rows and months its windows read, not the
    windows (runtime/fits/tasks.task_payload(compact=True)); the worker builds the same
    arrays, bit for bit, whatever the fits (both countries, windows reaching before a
    country's first month, the group's first and last origins), and returns the same forecasts
    and fitted state, stacked."""
    config = study()
    rng = np.random.default_rng(3)
    for g in build_groups(PANEL, config, get_adapter("ar_qr")):
        picks = [
            np.arange(len(g)),
            np.array([0]),
            np.array([len(g) - 1]),
            np.sort(rng.choice(len(g), 9, replace=False)),
        ]
        for idx in picks:
            kw = {"params": {"p": 1}, "quantiles": config.data.quantiles, "seed": 0}
            full = task_payload(g, idx, **kw)
            compact = task_payload(g, idx, **kw, compact=True)
            assert "data" not in compact
            assert compact["windows"]["grid"].nbytes < max(full["data"]["X"].nbytes, 4096)
            built = with_data(compact)["data"]
            for name, value in full["data"].items():
                assert built[name].tobytes() == value.tobytes(), name
                assert built[name].shape == value.shape, name
        a, b = (
            run_task(task_payload(g, picks[0], **kw)),
            run_task(task_payload(g, picks[0], **kw, compact=True)),
        )
        assert np.array_equal(a["index"], b["index"]) and a["pred"].tobytes() == b["pred"].tobytes()
        assert sorted(b["state"]) == sorted(a["state"]) and "states" not in b
        for name, value in a["state"].items():
            assert b["state"][name].tobytes() == value.tobytes(), name
        assert [sorted(s) for s in fit_states(b)] == [sorted(b["state"])] * len(b["index"])


def _forecast_frame_reference(groups, pred, alpha, have, config, model, panel) -> pd.DataFrame:
    """The forecast table the plain pandas way (rows of Python strings, reindexed actuals,
    then conform_forecasts' cast and sort): the oracle for forecast_rows."""
    from pipeline.runtime.fits.fit_groups import expand
    from pipeline.schema import conform_forecasts, month_start

    qs = np.asarray(config.data.quantiles)
    rows = []
    for gi, g in enumerate(groups):
        fi, cj, hi, qi = expand(g, np.nonzero(have[gi])[0], len(qs))
        origin = g.origin[fi]
        horizon = np.asarray(g.horizons)[hi]
        rows.append(
            pd.DataFrame(
                {
                    "COUNTRY": g.countries[fi, cj].astype(str),
                    "HORIZON": horizon,
                    "QUANTILE": qs[qi],
                    "FORECAST": pred[gi][fi, cj, hi, qi],
                    "ALPHA": alpha[gi][fi, qi],
                    "WINDOW_END": month_start(origin),
                    "WINDOW_START": month_start(origin - config.rolling_window.size + 1),
                    "TIME": month_start(origin + horizon),
                }
            )
        )
    frame = pd.concat(rows, ignore_index=True)
    frame["TARGET"], frame["MODEL"] = config.data.target, model
    actual = panel.set_index(["COUNTRY", "TIME"])["y_raw"]
    index = pd.MultiIndex.from_arrays([frame["COUNTRY"], frame["TIME"]])
    frame["ACTUAL"] = actual.reindex(index).to_numpy()
    return conform_forecasts(frame)


def test_the_probe_measures_a_compact_head_with_the_windows_a_worker_builds(tmp_path) -> None:
    """The probe's child gets the compact payload a worker gets (saved as .npz, no pickle) and
    measures batches of its first k fits: each batch is still compact, holds only the grid
    those fits read, and gives the worker the same windows and forecasts as the full head."""
    from pipeline.runtime.execute.probe_child import _head, load_payload, save_payload

    config = study()
    kw = {"params": {"p": 1}, "quantiles": config.data.quantiles, "seed": 0}
    for g in build_groups(PANEL, config, get_adapter("ar_qr")):
        everything = np.arange(len(g))
        path = tmp_path / f"payload-{g.horizon}.npz"
        save_payload(path, task_payload(g, everything, **kw, compact=True))
        loaded = load_payload(str(path))
        assert "data" not in loaded and loaded["keys"].tobytes() == g.key_bytes().tobytes()
        for k in (1, 4, len(g)):
            head = _head(loaded, k)
            full = task_payload(g, everything[:k], **kw)
            assert head["windows"]["grid"].nbytes <= loaded["windows"]["grid"].nbytes
            built = with_data(head)["data"]
            for name, value in full["data"].items():
                assert built[name].tobytes() == value.tobytes(), name
            a, b = run_task(full), run_task(head)
            assert a["pred"].tobytes() == b["pred"].tobytes()
        assert _head(loaded, 1)["windows"]["grid"].nbytes < loaded["windows"]["grid"].nbytes


@pytest.mark.parametrize("model", ["ar_qr", "ensemble_nn"])
def test_the_forecast_table_built_sorted_in_chunks_equals_the_pandas_one(
    tmp_path: Path, model: str
) -> None:
    """train writes its forecast table from Arrow chunks built already sorted (integer codes,
    no Python string per row); the file holds the same rows, types and order as the table
    built with pandas, byte for byte, for per-country and pooled fits (masked rows), fits
    not known, NaN forecasts, and chunks smaller than a group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io import write_parquet, write_parquet_tables
    from pipeline.runtime.fits.forecast_rows import TABLE_OPTIONS, forecast_chunks
    from pipeline.schema import forecast_arrow_schema

    d = copy.deepcopy(SMALL_STUDY)
    d["models"].setdefault(model, {})["enabled"] = True
    config = make_config(d)
    groups = build_groups(PANEL, config, adapter_for(config, model))
    rng = np.random.default_rng(7)
    Q = len(config.data.quantiles)
    pred = [rng.normal(size=(len(g), g.rows.shape[1], len(g.horizons), Q)) for g in groups]
    alpha = [rng.normal(size=(len(g), Q)) for g in groups]
    have = [rng.random(len(g)) < 0.8 for g in groups]
    pred[0][0, 0, 0, 0] = np.nan
    # actuals come from the panel: one without BB's last year leaves some rows without
    panel = PANEL[~((PANEL["COUNTRY"] == "BB") & (PANEL["TIME"] >= "2019-01-01"))]
    args = (groups, pred, alpha, have, config, model, panel)
    want = _forecast_frame_reference(*args)
    assert len(want) > 50 and want["ACTUAL"].notna().any() and want["ACTUAL"].isna().any()
    chunks = list(forecast_chunks(*args, chunk=37))
    assert len(chunks) == -(-len(want) // 37)
    got = pa.concat_tables(chunks).to_pandas()
    pd.testing.assert_frame_equal(got.astype(want.dtypes.to_dict()), want)
    write_parquet(tmp_path / "pandas.parquet", want)
    one = forecast_chunks(*args, chunk=len(want))
    write_parquet_tables(tmp_path / "arrow.parquet", forecast_arrow_schema(), one)
    assert (tmp_path / "arrow.parquet").read_bytes() == (tmp_path / "pandas.parquet").read_bytes()
    # as train writes it (no dictionary or compression on FORECAST): other bytes, the same table
    one = forecast_chunks(*args, chunk=37)
    write_parquet_tables(
        tmp_path / "train.parquet", forecast_arrow_schema(), one, options=TABLE_OPTIONS
    )
    assert pq.read_table(tmp_path / "train.parquet").equals(
        pq.read_table(tmp_path / "pandas.parquet")
    )
    # nothing known: one empty table with the schema
    nothing = [h & False for h in have]
    (empty,) = forecast_chunks(groups, pred, alpha, nothing, config, model, panel)
    assert empty.num_rows == 0 and empty.schema == forecast_arrow_schema()


def stacked_keys(grid, m0, org, size, h, p, min_rows, prefix, cdig, slots):  # type: ignore[no-untyped-def]
    """The per-country fits and keys as the plan built them before issue 18's tenth pass:
    every window stacked by window_arrays, then keys.bulk_keys over the stacked rows."""
    arr = window_arrays(grid, m0, org, size, [h], p)
    ok = np.isfinite(arr["X_new"]).all(-1) & (arr["w"].sum(-1) >= min_rows)
    ci, oi = np.nonzero(ok)
    ident = [cdig[ci], org[oi], *([slots[oi]] if slots is not None else [])]
    parts = (arr["X"][ci, oi], arr["y"][ci, oi][..., 0], arr["X_new"][ci, oi])
    return ci, oi, bulk_keys(prefix, *ident, *parts)


@pytest.mark.parametrize("seed", range(4))
def test_keys_gathered_from_the_grid_equal_the_stacked_windows_keys(seed: int) -> None:
    """country_fit_keys hashes exactly the bytes the stacked windows gave (the same fits, the
    same keys byte for byte): gaps, NaN of another sign or payload, origins before a
    country's data and past the grid, slots and a minimum of rows all included."""
    rng = np.random.default_rng(seed)
    C, M, p, size, h = 5, 40, int(rng.integers(1, 4)), 12, int(rng.integers(1, 4))
    grid = rng.normal(size=(C, M, p + 1))
    grid[rng.random(grid.shape) < 0.08] = np.nan
    grid[rng.random(grid.shape) < 0.03] = -np.nan  # another NaN's bits: canonicalised
    grid[1, :15] = np.nan  # a country that starts late
    org = np.arange(3, M + 4, 1 + seed % 2, dtype=np.int64) + 500  # some past the grid's end
    cdig = country_digests([f"C{i}" for i in range(C)])
    prefix = key_prefix("m", 1, {"a": seed}, [0.1, 0.5], h, seed)
    for slots, min_rows in [(None, 3), ((org // 2) % 3, 8)]:
        got = country_fit_keys(grid, 500, org, size, h, p, min_rows, prefix, cdig, slots)
        want = stacked_keys(grid, 500, org, size, h, p, min_rows, prefix, cdig, slots)
        assert got[0].size > 0 and (got[0] != 0).any()
        for a, b in zip(got, want, strict=True):
            assert a.tobytes() == b.tobytes()


def test_a_real_plans_keys_equal_the_stacked_windows_keys() -> None:
    """build_groups' keys of a real study (ar_qr, slotted) are the stacked windows' keys."""
    config = study()
    adapter = get_adapter("ar_qr")
    countries = sorted(PANEL["COUNTRY"].unique())
    for g in build_groups(PANEL, config, adapter):
        p = len(adapter.features(config))
        _, m0, grid = country_grid(PANEL, [*adapter.features(config), lead_column(g.horizon)])
        org = np.array([month_index(o) for o in window_origins(config.rolling_window)])
        prefix = key_prefix(
            adapter.name, adapter.version, adapter.params(config), config.data.quantiles,
            g.horizon, config.seed,
        )  # fmt: skip
        ci, oi, keys = stacked_keys(
            grid, m0, org, config.rolling_window.size, g.horizon, p,
            adapter.min_rows(config), prefix, country_digests(countries),
            (org // int(np.diff(org).min())) % adapter.slot_period,
        )  # fmt: skip
        assert len(g) == keys.size > 0
        assert g.key_raw.tobytes() == keys.tobytes()
        assert (g.origin == org[oi]).all() and (g.country == np.array(countries)[ci]).all()
