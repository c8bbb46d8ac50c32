"""The statistical tests against independent implementations, on seeded random data and
edge cases: Kupiec and Christoffersen as likelihood ratios of statsmodels' Logit, DQ as
statsmodels' OLS, Diebold-Mariano as statsmodels' HAC t statistic (short series included).
(The published MATLAB/rugarch examples and the vectorised tables: test_coverage_tests.py.)"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from forecast_frames import forecast_block
from scipy import stats
from scipy.special import logit

from pipeline.evaluation import coverage_sequence as cs
from pipeline.evaluation import coverage_tests as ct
from pipeline.evaluation.dm import dm_test


def _logit_llf(y: np.ndarray, x: np.ndarray) -> float:
    """The maximised log likelihood of statsmodels' Logit of y on x (quietly)."""
    return float(sm.Logit(y, x).fit(disp=0, method="newton", tol=1e-12).llf)


def _random_hits(rng: np.random.Generator, n: int, tau: float) -> np.ndarray:
    """Hits of a first-order Markov chain (some clustering) with all four transitions seen."""
    while True:
        p01, p11 = tau * rng.uniform(0.5, 1.5), min(0.95, tau * rng.uniform(1.0, 4.0))
        h = np.zeros(n, int)
        h[0] = rng.uniform() < tau
        for i in range(1, n):
            h[i] = rng.uniform() < (p11 if h[i - 1] else p01)
        counts = cs._transitions(h.astype(float))
        if (counts > 0).all():
            return h


@pytest.mark.parametrize("seed", range(6))
def test_kupiec_and_christoffersen_are_statsmodels_logit_likelihood_ratios(seed):
    """LR_uc = 2 [llf(Logit, constant) - llf at P(hit) = tau]; LR_ind = 2 [llf(Logit of
    hit_t on a constant and hit_{t-1}) - llf(constant only)] over t = 2..n: the Markov and
    i.i.d. Bernoulli models are exactly these saturated logits."""
    rng = np.random.default_rng(seed)
    tau = float(rng.choice([0.05, 0.1, 0.5, 0.9]))
    n = int(rng.integers(40, 400))
    hits = _random_hits(rng, n, tau)
    ones = np.ones((n, 1))
    lr_uc = 2.0 * (_logit_llf(hits, ones) - sm.Logit(hits, ones).loglike(np.array([logit(tau)])))
    prev, cur = hits[:-1], hits[1:]
    lr_ind = 2.0 * (
        _logit_llf(cur, np.column_stack([np.ones(n - 1), prev])) - _logit_llf(cur, ones[1:])
    )
    uc, p_uc = ct.kupiec(hits, tau)
    ind, p_ind = ct.christoffersen_independence(hits)
    cc, p_cc = ct.christoffersen_conditional(hits, tau)
    assert uc == pytest.approx(lr_uc, rel=1e-8, abs=1e-10)
    assert ind == pytest.approx(lr_ind, rel=1e-8, abs=1e-10)
    assert cc == pytest.approx(lr_uc + lr_ind, rel=1e-8, abs=1e-10)
    assert p_uc == pytest.approx(stats.chi2.sf(lr_uc, 1), rel=1e-7, abs=1e-12)
    assert p_ind == pytest.approx(stats.chi2.sf(lr_ind, 1), rel=1e-7, abs=1e-12)
    assert p_cc == pytest.approx(stats.chi2.sf(lr_uc + lr_ind, 2), rel=1e-7, abs=1e-12)


def test_coverage_test_edge_cases_by_formula():
    """A hit rate exactly tau: LR_uc 0, p 1. A perfectly alternating sequence: pi01 = pi11's
    complement = 1, the Markov model fits every transition (log likelihood 0), so LR_ind =
    -2 (n - 1) [pi ln pi + (1 - pi) ln(1 - pi)] with pi the share of 0 -> 1 transitions."""
    hits = np.array([0, 1] * 10)
    assert ct.kupiec(hits, 0.5) == (0.0, 1.0)
    pi = 10 / 19  # transitions: nine 1 -> 0, ten 0 -> 1
    want = -2.0 * 19 * (pi * math.log(pi) + (1 - pi) * math.log(1 - pi))
    stat, p = ct.christoffersen_independence(hits)
    assert stat == pytest.approx(want, rel=1e-12)
    assert p == pytest.approx(stats.chi2.sf(want, 1), rel=1e-10)
    # one hit, at the end: state 1 never precedes a transition, so pi11 never enters the
    # Markov likelihood and its maximum is the i.i.d. one: LR_ind 0; as a Logit of hit_t on
    # a constant and hit_{t-1}, whose slope is then unidentified and adds nothing
    assert ct.christoffersen_independence([0] * 9 + [1]) == (0.0, 1.0)
    assert all(math.isnan(v) for v in ct.christoffersen_independence([1]))
    # booleans are hits too
    assert ct.kupiec(hits.astype(bool), 0.5) == ct.kupiec(hits, 0.5)


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.SingularMatrixWarning")
@pytest.mark.parametrize("seed", range(4))
def test_dq_equals_statsmodels_ols_on_random_designs(seed):
    """DQ = fitted' fitted / (tau (1 - tau)) of the OLS of Hit_t on a constant, its four
    lags and the forecast (Engle and Manganelli 2004, eq. 6, under the null), with the
    degrees of freedom the design's rank."""
    rng = np.random.default_rng(100 + seed)
    tau = float(rng.choice([0.05, 0.25, 0.5, 0.95]))
    n = int(rng.integers(12, 300))
    forecast = rng.normal(size=n).cumsum()
    hits = (rng.uniform(size=n) < tau * rng.uniform(0.5, 2.0)).astype(int)
    demeaned = hits - tau
    x = np.column_stack(
        [np.ones(n - 4)] + [demeaned[4 - k : n - k] for k in range(1, 5)] + [forecast[4:]]
    )
    fit = sm.OLS(demeaned[4:], x).fit()
    want = float(fit.fittedvalues @ fit.fittedvalues) / (tau * (1 - tau))
    stat, p = ct.dq_test(hits, forecast, tau)
    assert stat == pytest.approx(want, rel=1e-8, abs=1e-12)
    assert p == pytest.approx(stats.chi2.sf(want, int(fit.df_model) + 1), rel=1e-7, abs=1e-12)


def _statsmodels_dm(d: np.ndarray, horizon: int) -> tuple[float, float]:
    fit = sm.OLS(d, np.ones(d.size)).fit(cov_type="HAC", cov_kwds={"maxlags": horizon - 1})
    return float(fit.tvalues[0]), float(fit.pvalues[0])


@pytest.mark.parametrize(
    ("size", "horizon"), [(3, 6), (4, 12), (5, 5), (6, 3), (11, 12), (30, 12), (120, 24)]
)
def test_dm_equals_statsmodels_hac_for_short_series_and_long_horizons(size, horizon):
    """Newey-West with h - 1 lags: weights 1 - k/h. A series shorter than h has no
    autocovariance past its end, but the weights of the lags it has are still 1 - k/h
    (statsmodels' HAC with maxlags = h - 1); they were 1 - k/T before the fix."""
    rng = np.random.default_rng(size * 100 + horizon)
    d = 0.3 + rng.normal(size=size + horizon).cumsum()[horizon:] * 0.2 + rng.normal(size=size)
    want = _statsmodels_dm(d, horizon)
    got = dm_test(d, horizon, small_sample=False)
    assert got == pytest.approx(want, rel=1e-9)
    # Harvey, Leybourne and Newbold (1997), eq. 9: DM * sqrt((T + 1 - 2h + h(h-1)/T) / T),
    # a t(T - 1) p-value; the factor is 0 at T = h - 1 and T = h (no statistic: NaN)
    t = size
    factor = (t + 1 - 2 * horizon + horizon * (horizon - 1) / t) / t
    stat, p = dm_test(d, horizon)
    if factor <= 1e-12:
        assert math.isnan(stat) and math.isnan(p)
        return
    assert stat == pytest.approx(want[0] * math.sqrt(factor), rel=1e-9)
    assert p == pytest.approx(2 * stats.t.sf(abs(stat), t - 1), rel=1e-9)


def test_dm_with_gaps_equals_the_series_without_them_at_h_1():
    """At h = 1 only the variance (lag 0) enters: months without a differential change
    nothing, and the statistic is statsmodels' on the observed months."""
    rng = np.random.default_rng(9)
    d = rng.normal(0.1, 1.0, size=50)
    gappy = d.copy()
    gappy[[3, 4, 20, 33]] = np.nan
    observed = gappy[np.isfinite(gappy)]
    assert dm_test(gappy, 1, small_sample=False) == pytest.approx(
        _statsmodels_dm(observed, 1), rel=1e-10
    )


@pytest.mark.parametrize("horizon", [2, 3, 6, 12])
def test_dm_with_gaps_is_the_amplitude_modulated_hac(horizon):
    """With months missing at h > 1, the variance is Parzen's (1963) amplitude-modulated
    estimator: the differential set to 0 in the gaps and regressed, without a constant,
    on the indicator of an observed month. Its OLS coefficient is the observed mean, its
    residuals the demeaned differential (0 in the gaps), and statsmodels' HAC t statistic
    with h - 1 lags is the DM statistic."""
    rng = np.random.default_rng(horizon)
    d = 0.2 + np.convolve(rng.normal(size=80 + horizon), np.ones(horizon) / horizon, "valid")[:80]
    d[rng.choice(80, 12, replace=False)] = np.nan
    observed = np.isfinite(d).astype(float)
    fit = sm.OLS(np.where(observed > 0, d, 0.0), observed).fit(
        cov_type="HAC", cov_kwds={"maxlags": horizon - 1}
    )
    got = dm_test(d, horizon, small_sample=False)
    assert got == pytest.approx((fit.tvalues[0], fit.pvalues[0]), rel=1e-9)


def test_dm_is_antisymmetric_and_scale_free():
    """Swapping model and benchmark flips the sign and keeps the p-value; scaling the losses
    changes nothing (a property of any studentised statistic, checked on random data)."""
    rng = np.random.default_rng(12)
    d = rng.normal(0.2, 1.0, size=40).cumsum() * 0.1 + rng.normal(size=40)
    stat, p = dm_test(d, 4)
    minus = dm_test(-d, 4)
    scaled = dm_test(7.5 * d, 4)
    assert minus[0] == pytest.approx(-stat, rel=1e-12) and minus[1] == pytest.approx(p)
    assert scaled == pytest.approx((stat, p), rel=1e-10)


def test_pooled_table_equals_statsmodels_per_group():
    """coverage_tests' vectorised table (one group per model and level, pooled over
    countries) equals the Logit likelihood ratios of the concatenated countries'
    transitions (each country's own t = 2..n only) and the OLS DQ of their stacked rows."""
    rng = np.random.default_rng(21)
    ends = pd.date_range("2015-01-01", periods=60, freq="MS")
    parts = []
    for country in ("AT", "BE", "CY"):
        y = rng.standard_t(4, size=ends.size)
        for tau in (0.1, 0.5):
            f = stats.norm.ppf(tau) + 0.3 * rng.normal(size=ends.size)
            parts.append(
                pd.DataFrame(
                    {
                        "MODEL": "m",
                        "COUNTRY": country,
                        "HORIZON": 1,
                        "QUANTILE": tau,
                        "WINDOW_END": ends,
                        "FORECAST": f,
                        "ACTUAL": y,
                    }
                )
            )
    frame = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=3)
    table = ct.coverage_tests(frame, by=["MODEL", "HORIZON", "QUANTILE"])
    for tau in (0.1, 0.5):
        rows = frame[frame["QUANTILE"] == tau].sort_values(["COUNTRY", "WINDOW_END"])
        prev, cur, designs, targets = [], [], [], []
        for _, g in rows.groupby("COUNTRY"):
            h = (g["ACTUAL"] <= g["FORECAST"]).to_numpy(int)
            prev.append(h[:-1])
            cur.append(h[1:])
            dm = h - tau
            n = h.size
            designs.append(
                np.column_stack(
                    [np.ones(n - 4)]
                    + [dm[4 - k : n - k] for k in range(1, 5)]
                    + [g["FORECAST"].to_numpy()[4:]]
                )
            )
            targets.append(dm[4:])
        prev, cur = np.concatenate(prev), np.concatenate(cur)
        lr_ind = 2.0 * (
            _logit_llf(cur, np.column_stack([np.ones(cur.size), prev]))
            - _logit_llf(cur, np.ones((cur.size, 1)))
        )
        fit = sm.OLS(np.concatenate(targets), np.vstack(designs)).fit()
        dq = float(fit.fittedvalues @ fit.fittedvalues) / (tau * (1 - tau))
        row = table[table["QUANTILE"] == tau].iloc[0]
        assert row["N"] == 180
        assert row["LR_IND"] == pytest.approx(lr_ind, rel=1e-8)
        assert row["DQ"] == pytest.approx(dq, rel=1e-8)
        assert row["P_DQ"] == pytest.approx(stats.chi2.sf(dq, 6), rel=1e-7)


@pytest.mark.parametrize("horizon", [1, 3, 12])
def test_dm_table_equals_statsmodels_on_the_mean_loss_differential(horizon):
    """The table's series: per outcome month, the mean over the common rows (countries and
    levels both models scored) of rho(model) - rho(benchmark); its HAC t statistic with
    h - 1 lags is statsmodels', scaled by the Harvey-Leybourne-Newbold factor."""
    from pipeline.evaluation.metrics import diebold_mariano
    from pipeline.schema import conform_forecasts

    rng = np.random.default_rng(horizon)
    ends = pd.date_range("2012-01-01", periods=48, freq="MS")
    rows = []
    for country in ("AT", "BE"):
        y = rng.normal(size=ends.size)
        for model, noise in (("m", 0.8), ("ar_qr", 1.0)):
            for level in (0.1, 0.5, 0.9):
                f = stats.norm.ppf(level) + rng.normal(0, noise, ends.size)
                rows.append(
                    forecast_block(
                        ends,
                        country=country,
                        model=model,
                        level=level,
                        horizon=horizon,
                        forecast=f,
                        actual=y,
                    )
                )
    frame = pd.concat(rows, ignore_index=True)
    # rows only one model has (not common) and an unscored row; no month loses every row
    frame = frame.drop(index=rng.choice(len(frame), 20, replace=False))
    frame = conform_forecasts(frame)
    table = diebold_mariano(frame, benchmark="ar_qr")
    u = frame["ACTUAL"] - frame["FORECAST"]
    frame["LOSS"] = np.maximum(frame["QUANTILE"] * u, (frame["QUANTILE"] - 1) * u)
    key = ["COUNTRY", "QUANTILE", "TIME"]
    both = frame[frame["MODEL"] == "m"].merge(
        frame[frame["MODEL"] == "ar_qr"], on=key, suffixes=("", "_B")
    )
    series = (both["LOSS"] - both["LOSS_B"]).groupby(both["TIME"]).mean().sort_index()
    assert len(series) == ends.size  # no gap: statsmodels' series is the same
    t_stat, _ = _statsmodels_dm(series.to_numpy(), horizon)
    t = series.size
    factor = math.sqrt((t + 1 - 2 * horizon + horizon * (horizon - 1) / t) / t)
    row = table.iloc[0]
    assert (row["N"], row["MONTHS"]) == (len(both), t)
    assert row["MEAN_DIFF"] == pytest.approx(series.mean(), rel=1e-12)
    assert row["STAT"] == pytest.approx(t_stat * factor, rel=1e-9)
    assert row["P_VALUE"] == pytest.approx(2 * stats.t.sf(abs(t_stat * factor), t - 1), rel=1e-9)


def test_table_degenerate_groups_zero_or_nan_as_the_single_sequence():
    """Per country: a country never hit gets LR_ind 0 and LR_cc = LR_uc (MATLAB's zero-count
    rule); a country with one scored row has no transition: LR_ind and LR_cc NaN."""
    ends = pd.date_range("2015-01-01", periods=24, freq="MS")
    rng = np.random.default_rng(4)
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "MODEL": "m",
                    "COUNTRY": c,
                    "HORIZON": 1,
                    "QUANTILE": 0.1,
                    "WINDOW_END": ends,
                    "FORECAST": f,
                    "ACTUAL": rng.normal(size=ends.size),
                }
            )
            for c, f in (("AT", -9.0), ("BE", -1.28), ("CY", 0.0))
        ],
        ignore_index=True,
    )
    frame.loc[(frame["COUNTRY"] == "CY") & (frame["WINDOW_END"] > ends[0]), "ACTUAL"] = np.nan
    table = ct.coverage_tests(frame, by=["MODEL", "COUNTRY", "HORIZON", "QUANTILE"])
    table = table.set_index("COUNTRY")
    at = table.loc["AT"]
    assert at["HIT_RATE"] == 0.0 and at["LR_IND"] == 0.0 and at["P_IND"] == 1.0
    assert at["LR_CC"] == pytest.approx(ct.kupiec(np.zeros(24), 0.1)[0], rel=1e-12)
    assert at["P_CC"] == pytest.approx(stats.chi2.sf(at["LR_UC"], 2), rel=1e-12)
    assert table.loc["CY", "N"] == 1
    assert math.isnan(table.loc["CY", "LR_IND"]) and math.isnan(table.loc["CY", "P_CC"])
    hits = (frame.loc[frame["COUNTRY"] == "BE", "ACTUAL"] <= -1.28).to_numpy(int)
    assert table.loc["BE", "LR_IND"] == pytest.approx(
        ct.christoffersen_independence(hits)[0], rel=1e-12, abs=1e-12
    )
