"""The metric tables' third memory pass (issue 18 item 6): the scored rows without TIME, each
grouping's ids dropped after its last table, the interval table's temporaries freed early.
The tables are those of the former code bit for bit (its steps kept here as the reference),
and the step holds less per row (traced allocations: fails on the former code)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import metrics as ev
from pipeline.evaluation.crossing import crossing_rows
from pipeline.evaluation.dm import dm_rows
from pipeline.evaluation.grouping import Keys, group_mean
from pipeline.evaluation.interval import _interval_merge, interval_rows


def _former_interval_rows(
    rows: pd.DataFrame, by: list[str], forecast_key: list[str], keys: Keys | None = None
) -> pd.DataFrame:
    """interval_rows as it was before this pass (main 93ebf3d), the reference."""
    if keys is None or keys.rows is not rows or not keys.dropna:
        keys = Keys(rows)
    model, n_models = keys.codes("MODEL")
    level, n_levels = keys.codes("QUANTILE")
    q = rows["QUANTILE"].to_numpy(np.float64)
    known = (model >= 0) & (level >= 0)
    cells = np.bincount(
        model[known].astype(np.int64) * n_levels + level[known], minlength=n_models * n_levels
    )
    present = cells.reshape(n_models, n_levels) > 0
    has = present.any(axis=1)
    lo_code = np.where(has, present.argmax(axis=1), -1)
    hi_code = np.where(has, n_levels - 1 - present[:, ::-1].argmax(axis=1), -1)
    value = np.full(n_levels + 1, np.nan)
    value[level[known]] = q[known]
    model_lower = np.r_[value[lo_code], np.nan]
    model_upper = np.r_[value[hi_code], np.nan]
    inner = model_lower < model_upper
    at_lo = np.flatnonzero(level == np.where(inner, np.r_[lo_code, -1], -2)[model])
    at_hi = np.flatnonzero(level == np.where(inner, np.r_[hi_code, -1], -2)[model])
    forecast = keys.groups(forecast_key)
    hi_of = np.full(forecast.n_groups if forecast.kept is None else 0, -1, dtype=np.int64)
    if forecast.kept is None:
        hi_of[forecast.ids[at_hi]] = at_hi
    if forecast.kept is not None or np.count_nonzero(hi_of >= 0) != at_hi.size or not at_lo.size:
        lower, upper = model_lower[model], model_upper[model]
        return _interval_merge(rows, by, forecast_key, lower, upper, at_lo, at_hi)
    partner = hi_of[forecast.ids[at_lo]]
    matched = partner >= 0
    lo, hi = at_lo[matched], partner[matched]
    actual = rows["ACTUAL"].to_numpy(np.float64)[lo]
    f = rows["FORECAST"].to_numpy(np.float64)
    f_lo, f_hi = f[lo], f[hi]
    both = rows[by].iloc[lo].reset_index(drop=True)
    hit = ((f_lo <= actual) & (actual <= f_hi)).astype(np.float64)
    both_keys = keys.subset(both, lo)
    table = group_mean(both, by, {"COVERAGE": hit, "WIDTH": f_hi - f_lo}, both_keys)
    group_model = model[lo][both_keys.groups(by).first]
    table.insert(len(by), "LOWER", model_lower[group_model])
    table.insert(len(by) + 1, "UPPER", model_upper[group_model])
    table.insert(len(by) + 2, "NOMINAL", table["UPPER"] - table["LOWER"])
    return table


def _former_metric_tables(frame: pd.DataFrame, benchmark: str) -> dict[str, pd.DataFrame]:
    """metric_tables as it was before this pass: one scored copy with every column (TIME
    too) per period for the joined and the scored tables, every grouping kept."""
    mchq = [ev.MODEL, ev.COUNTRY, ev.HORIZON, ev.QUANTILE]
    by, mh = list(ev.BY_DEFAULT), [ev.MODEL, ev.HORIZON]
    dtypes = {c: frame[c].dtype for c in mchq}
    work = ev.compact_frame(frame)
    joined_makers: dict[str, Any] = {
        "relative_pinball": lambda j, jk: ev._relative_rows(j, by, jk),
        "dm": lambda j, jk: dm_rows(j, benchmark, mh, True, dtypes),
        "dm_by_quantile": lambda j, jk: dm_rows(j, benchmark, by, True, dtypes),
    }
    scored_makers: dict[str, Any] = {
        "pinball": lambda s, k: ev._pinball_rows(s, by, k),
        "pinball_by_country": lambda s, k: ev._pinball_rows(s, mchq, k),
        "coverage": lambda s, k: ev._coverage_rows(s, by, k),
        "interval": lambda s, k: _former_interval_rows(s, mh, list(ev.FORECAST_KEY), k),
        "crps": lambda s, k: ev._crps_rows(s, mh, k),
    }
    order = ("pinball", "pinball_by_country", "relative_pinball", "coverage", "interval")
    order += ("crps", "crossing", "dm", "dm_by_quantile")
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in order}
    work_keys = Keys(work)
    covid = ev.covid_mask(work)
    for period in ("all", "ex_covid"):
        mask = ev._scored_mask(work).to_numpy()
        if period != "all":
            mask = mask & ~covid
        scored = ev._scored(work, mask)
        keys = work_keys.subset(scored, mask)
        joined, joined_keys = ev._with_benchmark(scored, benchmark, keys)
        for name, make in joined_makers.items():
            parts[name].append(make(joined, joined_keys).assign(PERIOD=period))
        for name, make in scored_makers.items():
            parts[name].append(make(scored, keys).assign(PERIOD=period))
    for period in ("all", "ex_covid"):
        where = None if period == "all" else ~covid
        parts["crossing"].append(crossing_rows(work, mh, work_keys, where).assign(PERIOD=period))
    tables = {}
    for name, pieces in parts.items():
        table = pd.concat(pieces, ignore_index=True)
        for c in mchq:
            coded = c in table.columns and isinstance(table[c].dtype, pd.CategoricalDtype)
            if coded and not isinstance(dtypes[c], pd.CategoricalDtype):
                table[c] = table[c].astype(dtypes[c])
        tables[name] = table[["PERIOD", *table.columns[:-1]]]
    return tables


def _random_frame(seed: int, n_countries: int = 5, models: tuple[str, ...] = ("a", "b", "c")):
    """Forecasts over the COVID window with crossed quantiles, null forecasts and actuals, a
    model with a single level (no interval), in a shuffled row order."""
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product(
        [list(models), [f"C{i}" for i in range(n_countries)], [1, 3], [0.1, 0.5, 0.9], range(40)],
        names=["MODEL", "COUNTRY", "HORIZON", "QUANTILE", "I"],
    ).to_frame(index=False)
    idx = idx.loc[(idx["MODEL"] != "c") | (idx["QUANTILE"] == 0.5)]  # "c": one level
    ends = pd.date_range("2019-01-01", periods=40, freq="MS")
    frame = idx.assign(
        WINDOW_END=ends[idx["I"]],
        TIME=ends[idx["I"]] + pd.to_timedelta(31 * idx["HORIZON"], unit="D"),
        FORECAST=rng.normal(size=len(idx)) + 1.3 * (idx["QUANTILE"] - 0.5),
        ACTUAL=rng.normal(size=len(idx)),
    ).drop(columns="I")
    frame.loc[rng.random(len(frame)) < 0.05, "FORECAST"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.1, "ACTUAL"] = np.nan
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return ev.compact_frame(frame.astype({"MODEL": "string", "COUNTRY": "string"}))


def _cases() -> dict[str, pd.DataFrame]:
    frames = {f"random{seed}": _random_frame(seed) for seed in (0, 1, 2)}
    one = _random_frame(3)
    frames["one row"] = one.iloc[:1].reset_index(drop=True)
    frames["nothing scored"] = one.assign(ACTUAL=np.nan)  # every group empty
    frames["covid only"] = one.loc[ev.covid_mask(one)].reset_index(drop=True)
    missing_key = one.copy()
    missing_key.loc[::7, "COUNTRY"] = np.nan  # the groupbys' dropped rows
    frames["missing keys"] = missing_key
    return frames


@pytest.mark.parametrize("benchmark", ["a", "absent"])
@pytest.mark.parametrize("case", list(_cases()))
def test_metric_tables_equal_the_former_code_bit_for_bit(case: str, benchmark: str) -> None:
    frame = _cases()[case]
    new, old = ev.metric_tables(frame, benchmark), _former_metric_tables(frame, benchmark)
    assert list(new) == list(old)
    for name in old:
        pd.testing.assert_frame_equal(new[name], old[name], check_exact=True, obj=name)


@pytest.mark.parametrize("case", list(_cases()))
def test_interval_rows_equal_the_former_code_bit_for_bit(case: str) -> None:
    scored = ev._scored(_cases()[case])
    for by in (["MODEL", "HORIZON"], ["MODEL", "COUNTRY", "HORIZON"]):
        new = interval_rows(scored, by, list(ev.FORECAST_KEY))
        if scored.empty:  # the former code failed here (argmax of no levels): an empty table
            assert new.empty and list(new.columns[-3:]) == ["N", "COVERAGE", "WIDTH"]
            continue
        old = _former_interval_rows(scored, by, list(ev.FORECAST_KEY))
        pd.testing.assert_frame_equal(new, old, check_exact=True)


def _frame_at_scale(n_countries: int) -> pd.DataFrame:
    """One model, 4 horizons, 3 levels, 120 origins, the last months unobserved: the shape of
    the rw scale study (most rows scored)."""
    rng = np.random.default_rng(0)
    idx = pd.MultiIndex.from_product(
        [["rw"], [f"C{i:03d}" for i in range(n_countries)], [1, 3, 6, 12], [0.1, 0.5, 0.9],
         range(120)],
        names=["MODEL", "COUNTRY", "HORIZON", "QUANTILE", "I"],
    ).to_frame(index=False)  # fmt: skip
    ends = pd.date_range("2014-01-01", periods=120, freq="MS")
    frame = idx.assign(
        WINDOW_END=ends[idx["I"]],
        TIME=ends[idx["I"]] + pd.to_timedelta(31 * idx["HORIZON"], unit="D"),
        FORECAST=rng.normal(size=len(idx)) + 1.3 * (idx["QUANTILE"] - 0.5),
        ACTUAL=rng.normal(size=len(idx)),
    ).drop(columns="I")
    frame.loc[frame["TIME"] > ends[-6], "ACTUAL"] = np.nan
    return ev.compact_frame(frame.astype({"MODEL": "string", "COUNTRY": "string"}))


def test_the_metric_step_holds_less_per_row() -> None:
    """Traced allocations at the step's peak, over the frame it reads: 102 B per row here
    (the former code 137: its scored rows kept TIME, every grouping's ids stayed cached and the
    interval table's pairing arrays lived until its means were taken)."""
    frame = _frame_at_scale(30)  # 43,200 rows
    ev.metric_tables(frame.iloc[:500], "ar_qr")  # imports and caches first: not counted
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        ev.metric_tables(frame, "ar_qr")
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak / len(frame) <= 122, f"{peak / len(frame):.1f} B per row"


def test_forget_groups_keeps_only_the_named_groupings() -> None:
    rows = _random_frame(0)
    keys = Keys(rows)
    kept = keys.groups(ev.FORECAST_KEY)
    keys.groups(ev.BY_DEFAULT)
    keys.forget_groups(keep=[ev.FORECAST_KEY])
    assert list(keys._groups) == [tuple(ev.FORECAST_KEY)]
    assert keys.groups(ev.FORECAST_KEY) is kept  # not made again
    again = keys.groups(ev.BY_DEFAULT)  # made again when asked
    np.testing.assert_array_equal(again.ids, Keys(rows).groups(ev.BY_DEFAULT).ids)


def _pandas_mean(ids: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """The former Groups.mean: pandas' grouped mean on the ids as a categorical's codes."""
    key = pd.Categorical.from_codes(ids, categories=pd.RangeIndex(n_groups))
    return pd.Series(values, copy=False).groupby(key, sort=True, observed=True).mean().to_numpy()


@pytest.mark.parametrize("seed", range(6))
def test_group_means_equal_pandas_bit_for_bit(seed: int) -> None:
    """Sorted ids (pandas' reduceat path, taken here directly) and shuffled ones (its kernel),
    with NaN, one row, groups of 1-3,000 rows, values over eleven orders of magnitude."""
    from pipeline.evaluation.grouping import Groups

    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(1, 2000))
    sizes = rng.integers(1, [2, 5, 40, 3000, 3, 200][seed], n_groups)
    ids = np.repeat(np.arange(n_groups), sizes).astype(np.int32)
    values = rng.standard_normal(ids.size) * 10.0 ** rng.integers(-3, 8, ids.size)
    cases = {"sorted": (ids, values), "one row": (ids[:1], values[:1])}
    cases["shuffled"] = (ids[rng.permutation(ids.size)], values)
    with_nan = values.copy()
    with_nan[rng.random(values.size) < 0.05] = np.nan
    cases["sorted, NaN"] = (ids, with_nan)
    for name, (case_ids, case_values) in cases.items():
        n = int(case_ids.max()) + 1
        got = Groups(ids=case_ids, kept=None, n_groups=n).mean(case_values)
        want = _pandas_mean(case_ids, case_values, n)
        assert np.array_equal(got.view(np.int64), want.view(np.int64)), name
    # rows dropped by a mask (missing keys): the kept rows' means
    kept = rng.random(ids.size) < 0.7
    kept[0] = True
    renumbered = np.unique(ids[kept], return_inverse=True)[1].astype(np.int32)
    n = int(renumbered.max()) + 1
    got = Groups(ids=renumbered, kept=kept, n_groups=n).mean(values)
    assert np.array_equal(got, _pandas_mean(renumbered, values[kept], n))
