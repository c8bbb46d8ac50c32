"""Metric functions against hand-computed values and independent oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from pipeline.evaluation import metrics as ev
from pipeline.evaluation import metrics_json
from pipeline.schema import conform_forecasts


def _rows(model, country, horizon, origin, actual, forecasts, levels=(0.1, 0.5, 0.9)):
    origin = pd.Timestamp(origin)
    return [
        {
            "TIME": origin + pd.DateOffset(months=horizon),
            "COUNTRY": country,
            "TARGET": "y",
            "MODEL": model,
            "QUANTILE": q,
            "HORIZON": horizon,
            "WINDOW_START": origin - pd.DateOffset(months=11),
            "WINDOW_END": origin,
            "FORECAST": f,
            "ACTUAL": actual,
        }
        for q, f in zip(levels, forecasts, strict=True)
    ]


@pytest.fixture
def tiny() -> pd.DataFrame:
    """Model "m" and benchmark "ar_qr", one country, h = 1.

    m:     2019-01: y=1, F=(0,1,2) -> losses (0.1, 0, 0.1), inside the interval
           2019-02: y=3, F=(0,1,2) -> losses (0.3, 1.0, 0.9), outside
           2019-03: y unknown, F=(0,2,1) (crossed)             -> not scored
           2019-04: y=0, F=(0,0,0) -> losses 0; the benchmark has no such row
    ar_qr: 2019-01: y=1, F=(1,1,1) -> losses 0;  2019-02: y=3, F=(1,1,1) -> (0.2, 1.0, 1.8)
    """
    rows = (
        _rows("m", "AT", 1, "2019-01", 1.0, (0.0, 1.0, 2.0))
        + _rows("m", "AT", 1, "2019-02", 3.0, (0.0, 1.0, 2.0))
        + _rows("m", "AT", 1, "2019-03", np.nan, (0.0, 2.0, 1.0))
        + _rows("m", "AT", 1, "2019-04", 0.0, (0.0, 0.0, 0.0))
        + _rows("ar_qr", "AT", 1, "2019-01", 1.0, (1.0, 1.0, 1.0))
        + _rows("ar_qr", "AT", 1, "2019-02", 3.0, (1.0, 1.0, 1.0))
    )
    return conform_forecasts(pd.DataFrame(rows))


def _value(table: pd.DataFrame, column: str, **where) -> float:
    mask = np.ones(len(table), dtype=bool)
    for key, value in where.items():
        mask &= (table[key] == value).to_numpy()
    assert mask.sum() == 1, (where, table)
    return float(table.loc[mask, column].iloc[0])


def test_pinball_hand_computed(tiny):
    table = ev.pinball(tiny)
    m = table[table["MODEL"] == "m"]
    # origins 2019-01, 2019-02, 2019-04 are scored (3 rows per level); 2019-03 has no actual
    assert m["N"].tolist() == [3, 3, 3]
    assert m["PINBALL"].to_numpy() == pytest.approx([0.4 / 3, 1.0 / 3, 1.0 / 3])
    assert list(table.columns) == ["MODEL", "HORIZON", "QUANTILE", "N", "PINBALL"]
    pooled = ev.pinball(tiny, by=("MODEL",))
    assert _value(pooled, "PINBALL", MODEL="ar_qr") == pytest.approx(3.0 / 6)


def test_relative_pinball_uses_common_rows(tiny):
    table = ev.relative_pinball(tiny, benchmark="ar_qr")
    m = table[table["MODEL"] == "m"].reset_index(drop=True)
    # common set = origins 2019-01 and 2019-02 only (2019-04 lacks a benchmark row)
    assert m["N"].tolist() == [2, 2, 2]
    assert m["PINBALL"].to_numpy() == pytest.approx([0.2, 0.5, 0.5])
    assert m["BENCHMARK_PINBALL"].to_numpy() == pytest.approx([0.1, 0.5, 0.9])
    assert m["RELATIVE_PINBALL"].to_numpy() == pytest.approx([2.0, 1.0, 0.5 / 0.9])
    bench = table[table["MODEL"] == "ar_qr"]
    assert bench["RELATIVE_PINBALL"].to_numpy() == pytest.approx([1.0, 1.0, 1.0])
    pooled = ev.relative_pinball(tiny, by=("MODEL", "HORIZON"))
    assert _value(pooled, "RELATIVE_PINBALL", MODEL="m") == pytest.approx(1.2 / 1.5)


def test_coverage_interval_crps_crossing_hand_computed(tiny):
    cov = ev.coverage(tiny)
    m = cov[cov["MODEL"] == "m"]
    # y <= F: 2019-01 (no, yes, yes), 2019-02 (no, no, no), 2019-04 (yes, yes, yes)
    assert m["COVERAGE"].to_numpy() == pytest.approx([1 / 3, 2 / 3, 2 / 3])

    interval = ev.interval_coverage(tiny)
    row = interval[interval["MODEL"] == "m"].iloc[0]
    assert (row["LOWER"], row["UPPER"], row["NOMINAL"]) == pytest.approx((0.1, 0.9, 0.8))
    assert row["N"] == 3
    assert row["COVERAGE"] == pytest.approx(2 / 3)  # 2019-01 and 2019-04 (0 <= 0 <= 0)
    assert row["WIDTH"] == pytest.approx((2 + 2 + 0) / 3)

    crps = ev.crps(tiny)
    # per forecast 2 * mean_q loss: 2019-01: 2*0.2/3, 2019-02: 2*2.2/3, 2019-04: 0
    assert _value(crps, "CRPS", MODEL="m") == pytest.approx((0.4 / 3 + 4.4 / 3 + 0) / 3)
    assert _value(crps, "N", MODEL="m") == 3

    crossing = ev.crossing_rate(tiny)
    # 4 forecasts of m (crossing needs no actual), one crossed; the benchmark's flat fan is fine
    assert _value(crossing, "CROSSING_RATE", MODEL="m") == pytest.approx(0.25)
    assert _value(crossing, "N", MODEL="m") == 4
    assert _value(crossing, "CROSSING_RATE", MODEL="ar_qr") == 0.0


def test_crps_of_a_median_only_forecast_is_absolute_error():
    """With only the median, 2 * rho_0.5(u) = |u|: the CRPS of a point forecast."""
    rows = _rows("m", "AT", 1, "2019-01", 2.5, (1.0,), levels=(0.5,))
    rows += _rows("m", "AT", 1, "2019-02", -1.0, (0.5,), levels=(0.5,))
    table = ev.crps(conform_forecasts(pd.DataFrame(rows)))
    assert table["CRPS"].iloc[0] == pytest.approx((1.5 + 1.5) / 2)


def test_crps_approximation_converges_to_gaussian_closed_form():
    """Dense quantile grid of N(mu, sigma): 2 * mean pinball -> closed-form normal CRPS."""
    mu, sigma, y = 0.3, 1.7, 1.9
    levels = (np.arange(2000) + 0.5) / 2000
    forecasts = stats.norm.ppf(levels, loc=mu, scale=sigma)
    frame = conform_forecasts(pd.DataFrame(_rows("m", "AT", 1, "2019-01", y, forecasts, levels)))
    z = (y - mu) / sigma
    exact = sigma * (
        z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi)
    )
    assert ev.crps(frame)["CRPS"].iloc[0] == pytest.approx(exact, rel=1e-4)


def test_exclude_covid_boundaries():
    months = ["2020-02", "2020-03", "2021-06", "2021-12", "2022-01"]
    rows = []
    for month in months:
        rows += _rows(
            "m", "AT", 1, pd.Timestamp(month) - pd.DateOffset(months=1), 1.0, (1.0,), (0.5,)
        )
    frame = conform_forecasts(pd.DataFrame(rows))
    kept = ev.exclude_covid(frame)
    assert [f"{t:%Y-%m}" for t in kept["TIME"]] == ["2020-02", "2022-01"]
    narrow = ev.exclude_covid(frame, start="2021-06", end="2021-06")
    assert len(narrow) == 4
    with pytest.raises(ValueError, match="start"):
        ev.exclude_covid(frame, start="March 2020x")
    with pytest.raises(ValueError, match="end"):
        ev.exclude_covid(frame, start="2021-01", end="2020-01")


@pytest.mark.parametrize("horizon", [1, 3, 6])
def test_dm_variance_matches_statsmodels_hac(horizon):
    rng = np.random.default_rng(horizon)
    shocks = rng.normal(size=80 + horizon)
    d = 0.2 + np.convolve(shocks, np.ones(horizon) / horizon, mode="valid")[:80]  # MA(h-1)
    fit = sm.OLS(d, np.ones(d.size)).fit(cov_type="HAC", cov_kwds={"maxlags": horizon - 1})
    stat, p_value = ev.dm_test(d, horizon, small_sample=False)
    assert stat == pytest.approx(fit.tvalues[0], rel=1e-10)
    assert p_value == pytest.approx(fit.pvalues[0], rel=1e-8)
    # Harvey-Leybourne-Newbold: scaled statistic, t(T-1) p-value
    t = d.size
    factor = math.sqrt((t + 1 - 2 * horizon + horizon * (horizon - 1) / t) / t)
    stat_hln, p_hln = ev.dm_test(d, horizon, small_sample=True)
    assert stat_hln == pytest.approx(fit.tvalues[0] * factor, rel=1e-10)
    assert p_hln == pytest.approx(2 * stats.t.sf(abs(stat_hln), df=t - 1), rel=1e-10)


def test_dm_edge_cases():
    assert ev.dm_test(np.zeros(30), 3) == (0.0, 1.0)
    d = np.random.default_rng(0).normal(size=40)
    # trailing and leading gaps carry no information
    padded = np.concatenate([[np.nan] * 3, d, [np.nan] * 5])
    assert ev.dm_test(padded, 2) == pytest.approx(ev.dm_test(d, 2))
    stat, p_value = ev.dm_test(np.array([1.0]), 1)
    assert math.isnan(stat) and math.isnan(p_value)
    with pytest.raises(ValueError, match="horizon"):
        ev.dm_test(d, 0)


def test_diebold_mariano_on_a_forecast_table_matches_its_series():
    """Benchmark exact (loss 0); the model's median misses by 2*d_t, so its loss is d_t."""
    rng = np.random.default_rng(7)
    horizon, origins = 2, pd.date_range("2015-01", periods=36, freq="MS")
    d = rng.gamma(2.0, 0.5, size=origins.size)
    rows = []
    for origin, dt in zip(origins, d, strict=True):
        rows += _rows("m", "AT", horizon, origin, 1.0, (1.0 - 2 * dt,), (0.5,))
        rows += _rows("ar_qr", "AT", horizon, origin, 1.0, (1.0,), (0.5,))
    table = ev.diebold_mariano(conform_forecasts(pd.DataFrame(rows)))
    assert list(table.columns) == [
        "MODEL",
        "HORIZON",
        "N",
        "MONTHS",
        "MEAN_DIFF",
        "STAT",
        "P_VALUE",
        "P_HOLM",
    ]
    assert table["MODEL"].tolist() == ["m"]  # the benchmark is not tested against itself
    row = table.iloc[0]
    assert (row["N"], row["MONTHS"]) == (36, 36)
    assert row["MEAN_DIFF"] == pytest.approx(d.mean())
    assert (row["STAT"], row["P_VALUE"]) == pytest.approx(ev.dm_test(d, horizon))
    assert row["STAT"] > 0  # the model is worse


def test_bad_arguments_name_the_parameter(tiny):
    with pytest.raises(ValueError, match="by"):
        ev.pinball(tiny, by=("MODEL", "ALPHA"))
    with pytest.raises(ValueError, match="by"):
        ev.coverage(tiny, by=("MODEL", "HORIZON"))  # coverage needs QUANTILE
    with pytest.raises(ValueError, match="benchmark"):
        ev.relative_pinball(tiny, benchmark="nope")
    with pytest.raises(ValueError, match="frame"):
        ev.pinball(tiny.drop(columns="ACTUAL"))


def test_compute_metrics_keys_values_and_json(tiny):
    metrics = metrics_json.compute_metrics(tiny)
    assert metrics["all"]["pinball"]["m"]["h1"]["q0.1"] == pytest.approx(0.4 / 3, rel=1e-5)
    assert metrics["all"]["pinball"]["m"]["h1"]["mean"] == pytest.approx(2.4 / 9, rel=1e-5)
    assert metrics["all"]["relative_pinball"]["m"]["h1"]["q0.1"] == 2.0
    assert metrics["all"]["coverage"]["m"]["h1"]["q0.5"] == pytest.approx(2 / 3, rel=1e-5)
    assert metrics["all"]["interval"]["m"]["h1"]["nominal"] == 0.8
    assert metrics["all"]["crossing_rate"]["m"]["h1"] == 0.25
    assert set(metrics["all"]["dm"]) == {"m"}
    assert metrics["all"]["n_scored"] == 9 + 6
    # rounded to 6 significant digits, deterministic, strict JSON (NaN -> null)
    assert metrics["all"]["pinball"]["m"]["h1"]["q0.1"] == 0.133333
    text = json.dumps(metrics, sort_keys=True, allow_nan=False)
    assert text == json.dumps(
        metrics_json.compute_metrics(tiny.sample(frac=1, random_state=1)), sort_keys=True
    )
    # every month of the tiny frame is before COVID: both periods agree
    assert metrics["ex_covid"]["pinball"] == metrics["all"]["pinball"]


def test_metric_tables_have_both_periods_and_survive_no_benchmark(tiny):
    shift = pd.DateOffset(years=1, months=2)  # 2019-02.. -> 2020-04.., inside the COVID window
    shifted = tiny.assign(**{c: tiny[c] + shift for c in ("TIME", "WINDOW_START", "WINDOW_END")})
    tables = ev.metric_tables(pd.concat([tiny, shifted], ignore_index=True))
    assert set(tables["pinball"]["PERIOD"]) == {"all", "ex_covid"}
    all_n = tables["pinball"].query("PERIOD == 'all'")["N"].sum()
    ex_n = tables["pinball"].query("PERIOD == 'ex_covid'")["N"].sum()
    assert all_n == 2 * ex_n  # the shifted copy lies inside the COVID window
    alone = ev.metric_tables(tiny[tiny["MODEL"] == "m"])
    assert alone["relative_pinball"].empty and alone["dm"].empty
    assert metrics_json.compute_metrics(tiny[tiny["MODEL"] == "m"])["benchmark_present"] == 0


def test_summary_metrics_pools_horizons_and_levels(tiny):
    summary = metrics_json.summary_metrics(tiny)
    m = summary["all"]["m"]
    assert m["pinball"] == pytest.approx(2.4 / 9, rel=1e-5)
    assert m["relative_pinball"] == pytest.approx(1.2 / 1.5, rel=1e-5)
    assert m["interval_coverage"] == pytest.approx(2 / 3, rel=1e-5)
    assert m["crps"] == pytest.approx((0.4 / 3 + 4.4 / 3) / 3, rel=1e-5)
    assert m["crossing_rate"] == 0.25
    assert summary["all"]["ar_qr"]["relative_pinball"] == 1.0
    assert summary["ex_covid"] == summary["all"]
