"""Coverage tests against independent hand computations; the MCS against a direct arch call."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from pipeline.evaluation import coverage_sequence as cs
from pipeline.evaluation import coverage_tests as ct
from pipeline.evaluation import mcs

HITS = np.array([0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0])


def test_kupiec_equals_binomial_likelihood_ratio():
    tau, n1, n = 0.1, int(HITS.sum()), HITS.size
    # the binomial coefficient cancels: LR = 2 [log B(n1; n, n1/n) - log B(n1; n, tau)]
    expected = 2.0 * (stats.binom.logpmf(n1, n, n1 / n) - stats.binom.logpmf(n1, n, tau))
    stat, p = ct.kupiec(HITS, tau)
    assert stat == pytest.approx(expected, rel=1e-12)
    assert p == pytest.approx(stats.chi2.sf(expected, 1), rel=1e-12)
    assert 0.05 < p < 0.1  # 5 hits of 20 at tau = 0.1: rejected at 10%, not at 5%


def test_kupiec_degenerate_sequences_are_defined():
    # no hits: LR = -2 n log(1 - tau); all hits: LR = -2 n log(tau)
    assert ct.kupiec(np.zeros(10), 0.1)[0] == pytest.approx(-20 * math.log(0.9))
    assert ct.kupiec(np.ones(10), 0.1)[0] == pytest.approx(-20 * math.log(0.1))
    assert all(math.isnan(v) for v in ct.kupiec([], 0.1))
    with pytest.raises(ValueError, match="tau"):
        ct.kupiec(HITS, 1.0)
    with pytest.raises(ValueError, match="0 and 1"):
        ct.kupiec([0, 2], 0.5)


def _markov_loglik(hits: np.ndarray) -> tuple[float, float]:
    """Restricted (i.i.d.) and Markov log likelihoods of the transitions, by a crosstab."""
    table = pd.crosstab(pd.Series(hits[:-1], name="prev"), pd.Series(hits[1:], name="cur"))
    table = table.reindex(index=[0, 1], columns=[0, 1], fill_value=0).to_numpy(float)
    p_markov = table / table.sum(axis=1, keepdims=True)
    p_iid = table.sum(axis=0) / table.sum()
    with np.errstate(divide="ignore"):
        markov = np.nansum(np.where(table > 0, table * np.log(p_markov), 0.0))
        iid = np.nansum(np.where(table.sum(axis=0) > 0, table.sum(axis=0) * np.log(p_iid), 0.0))
    return iid, markov


def test_christoffersen_equals_crosstab_likelihoods():
    iid, markov = _markov_loglik(HITS)
    stat, p = ct.christoffersen_independence(HITS)
    assert stat == pytest.approx(-2.0 * (iid - markov), rel=1e-12)
    assert p == pytest.approx(stats.chi2.sf(stat, 1))
    uc, _ = ct.kupiec(HITS, 0.1)
    cc, p_cc = ct.christoffersen_conditional(HITS, 0.1)
    assert cc == pytest.approx(uc + stat)
    assert p_cc == pytest.approx(stats.chi2.sf(uc + stat, 2))


def test_christoffersen_clustered_hits_reject_and_degenerate_is_zero_or_nan():
    clustered = np.array([0] * 10 + [1] * 5 + [0] * 10 + [1] * 5)
    assert ct.christoffersen_independence(clustered)[1] < 0.01
    # a state never seen: the Markov and i.i.d. maxima coincide (LR_ind 0, p 1, as MATLAB's
    # varbacktest), so LR_cc is LR_uc; no transition at all (n < 2): undefined
    for degenerate in (np.zeros(12), np.ones(12), np.array([0] * 11 + [1])):
        assert ct.christoffersen_independence(degenerate) == (0.0, 1.0)
        uc = ct.kupiec(degenerate, 0.5)[0]
        assert ct.christoffersen_conditional(degenerate, 0.5) == (uc, stats.chi2.sf(uc, 2))
    assert all(math.isnan(v) for v in ct.christoffersen_independence(np.array([1])))
    assert all(math.isnan(v) for v in ct.christoffersen_conditional(np.array([1]), 0.5))


def _sequence_with_transitions(n00: int, n01: int, n10: int, n11: int) -> np.ndarray:
    """A 0/1 sequence that starts and ends with 0 and has exactly these transition counts:
    n01 runs of hits, n11 of them of length 2 (needs n01 == n10 >= n11), zeros between."""
    assert n01 == n10 >= n11
    runs = [2] * n11 + [1] * (n01 - n11)
    gaps = n00 + n01 + 1  # zeros: one more run of zeros than runs of hits, n00 0->0 steps
    zero_runs = [gaps - n01] + [1] * n01  # the first gap takes every extra zero
    out = [0] * zero_runs[0]
    for run, zeros in zip(runs, zero_runs[1:], strict=True):
        out += [1] * run + [0] * zeros
    h = np.array(out)
    counts = cs._transitions(h.astype(float))
    assert counts.tolist() == [n00, n01, n10, n11]
    return h


def test_reproduces_matlab_varbacktest_published_example():
    """The worked example of MATLAB's Risk Management Toolbox, `cc(vbt)` on `VaRBacktestData`
    (`EquityIndex`, `Normal95`): 1043 observations, VaR level 0.95 (tau = 0.05), 57 failures,
    N00 = 932, N10 = 53, N01 = 53, N11 = 4; published LRatioPOF 0.46147 (PValuePOF 0.49694),
    LRatioCCI 0.25866 (PValueCCI 0.61104), LRatioCC 0.72013 (PValueCC 0.69763).
    Source: https://www.mathworks.com/help/risk/varbacktest.cc.html (and varbacktest.cci.html,
    which prints the same CCI row). POF is Kupiec's test and CCI Christoffersen's; both depend
    on the sequence only through these counts, so any sequence with them reproduces the
    published numbers (a failure is a hit: the return at or below the 5% quantile)."""
    hits = _sequence_with_transitions(n00=932, n01=53, n10=53, n11=4)
    assert hits.size == 1043 and hits.sum() == 57
    published = {
        ct.kupiec(hits, 0.05): (0.46147, 0.49694),
        ct.christoffersen_independence(hits): (0.25866, 0.61104),
        ct.christoffersen_conditional(hits, 0.05): (0.72013, 0.69763),
    }
    for (stat, p), (want_stat, want_p) in published.items():
        assert stat == pytest.approx(want_stat, abs=5e-6)  # printed to 5 significant digits
        assert p == pytest.approx(want_p, abs=5e-6)


@pytest.mark.parametrize(("failures", "lr_uc", "p_uc"), [(5, 2.544, 0.111), (7, 6.535, 0.011)])
def test_kupiec_reproduces_a_published_rugarch_vartest_table(failures, lr_uc, p_uc):
    """rugarch's `VaRTest` output as published for 1% VaR over a 224-day backtest (GARCH and
    EGARCH columns: 5 and 7 exceedances, LR.uc 2.544 and 6.535, p-values 0.111 and 0.011).
    Source: https://html.scirp.org/file/_8-2410529_10.htm (table of a SCIRP journal article).
    Kupiec's statistic depends on the count only, so the hits' positions do not matter."""
    hits = np.zeros(224)
    hits[np.linspace(0, 223, failures).astype(int)] = 1
    stat, p = ct.kupiec(hits, 0.01)
    assert stat == pytest.approx(lr_uc, abs=5e-4) and p == pytest.approx(p_uc, abs=5e-4)


def test_dq_equals_statsmodels_ols():
    rng = np.random.default_rng(3)
    tau, n = 0.1, 60
    forecast = rng.normal(size=n)
    hits = (rng.uniform(size=n) < 0.2).astype(int)
    demeaned = hits - tau
    x = np.column_stack(
        [np.ones(n - 4)] + [demeaned[4 - k : n - k] for k in range(1, 5)] + [forecast[4:]]
    )
    fit = sm.OLS(demeaned[4:], x).fit()
    expected = float(fit.params @ x.T @ x @ fit.params) / (tau * (1 - tau))
    stat, p = ct.dq_test(hits, forecast, tau)
    assert stat == pytest.approx(expected, rel=1e-9)
    assert p == pytest.approx(stats.chi2.sf(expected, 6), rel=1e-9)


def test_dq_degenerate_cases():
    assert all(math.isnan(v) for v in ct.dq_test(np.ones(8), np.zeros(8), 0.5))  # 4 rows < 7
    # a constant forecast is collinear with the constant: dof drops to the rank (5)
    rng = np.random.default_rng(0)
    hits = (rng.uniform(size=40) < 0.5).astype(int)
    stat, p = ct.dq_test(hits, np.ones(40), 0.5)
    assert p == pytest.approx(stats.chi2.sf(stat, 5))
    # no hits: Hit = -tau throughout, the lags are collinear with the constant (rank 2) and
    # the fit is exact: DQ = (n - 4) tau^2 / (tau (1 - tau))
    stat, p = ct.dq_test(np.zeros(40), rng.normal(size=40), 0.1)
    assert stat == pytest.approx(36 * 0.1 / 0.9)
    assert p == pytest.approx(stats.chi2.sf(stat, 2))


def _frame(rng: np.random.Generator, countries=("AT", "BE"), n=30) -> pd.DataFrame:
    rows = []
    ends = pd.date_range("2018-01-01", periods=n, freq="MS")
    for model, shift in (("a", 0.0), ("b", 2.0), ("c", 0.1)):
        for country in countries:
            y = rng.normal(size=n)
            for q in (0.1, 0.9):
                f = stats.norm.ppf(q) + shift + np.zeros(n)
                rows.append(
                    pd.DataFrame(
                        {
                            "MODEL": model,
                            "COUNTRY": country,
                            "HORIZON": 1,
                            "QUANTILE": q,
                            "WINDOW_END": ends,
                            "TIME": ends + pd.DateOffset(months=1),
                            "FORECAST": f,
                            "ACTUAL": y,
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


def test_coverage_tests_table_per_country_matches_direct_calls():
    frame = _frame(np.random.default_rng(1))
    table = ct.coverage_tests(frame, by=["MODEL", "COUNTRY", "HORIZON", "QUANTILE"])
    one = frame.query("MODEL == 'b' and COUNTRY == 'BE' and QUANTILE == 0.9")
    one = one.sort_values("WINDOW_END")
    hits = (one["ACTUAL"] <= one["FORECAST"]).to_numpy(int)
    row = table.query("MODEL == 'b' and COUNTRY == 'BE' and QUANTILE == 0.9").iloc[0]
    assert row["N"] == 30
    assert row["LR_UC"] == pytest.approx(ct.kupiec(hits, 0.9)[0])
    assert row["DQ"] == pytest.approx(ct.dq_test(hits, one["FORECAST"].to_numpy(), 0.9)[0])


def test_pooled_coverage_tests_sum_transitions_within_countries():
    frame = _frame(np.random.default_rng(2))
    pooled = ct.coverage_tests(frame, by=["MODEL", "HORIZON", "QUANTILE"])
    part = frame.query("MODEL == 'a' and QUANTILE == 0.1").sort_values(["COUNTRY", "WINDOW_END"])
    hits = {c: (g["ACTUAL"] <= g["FORECAST"]).to_numpy(int) for c, g in part.groupby("COUNTRY")}
    all_hits = np.concatenate(list(hits.values()))
    row = pooled.query("MODEL == 'a' and QUANTILE == 0.1").iloc[0]
    assert row["N"] == 60
    assert row["LR_UC"] == pytest.approx(ct.kupiec(all_hits, 0.1)[0])
    # the independence test counts transitions inside each country only
    counts = sum(
        pd.crosstab(h[:-1], h[1:]).reindex(index=[0, 1], columns=[0, 1], fill_value=0).to_numpy()
        for h in hits.values()
    )
    n00, n01, n10, n11 = counts.ravel().astype(float)
    if n10 + n11 > 0:
        pi, p0, p1 = (n01 + n11) / counts.sum(), n01 / (n00 + n01), n11 / (n10 + n11)
        from scipy.special import xlogy

        lr = -2 * (
            xlogy(n01 + n11, pi)
            + xlogy(n00 + n10, 1 - pi)
            - xlogy(n01, p0)
            - xlogy(n00, 1 - p0)
            - xlogy(n11, p1)
            - xlogy(n10, 1 - p1)
        )
        assert row["LR_IND"] == pytest.approx(lr)
        assert row["LR_CC"] == pytest.approx(row["LR_UC"] + lr)


def test_mcs_equals_a_direct_arch_call():
    from arch.bootstrap import MCS

    frame = _frame(np.random.default_rng(4), n=40)
    losses = mcs.origin_losses(frame, 1)
    assert list(losses.columns) == ["a", "b", "c"] and len(losses) == 40
    table = mcs.model_confidence_set(losses, size=0.1, reps=200, seed=7)
    direct = MCS(losses, size=0.1, reps=200, method="R", bootstrap="stationary", seed=7)
    direct.compute()
    expected = direct.pvalues["Pvalue"]
    assert table["P_VALUE"].tolist() == [float(expected[m]) for m in losses.columns]
    assert set(table.loc[table["IN_MCS"], "MODEL"]) == set(direct.included)
    assert not table.set_index("MODEL").loc["b", "IN_MCS"]  # the biased model is excluded
    per_horizon = mcs.mcs_table(frame, reps=200, seed=7)
    assert per_horizon["P_VALUE"].tolist() == table["P_VALUE"].tolist()


def test_mcs_shares_the_result_of_models_with_identical_losses():
    frame = _frame(np.random.default_rng(5), n=40)
    losses = mcs.origin_losses(frame, 1)
    twin = losses.assign(a_cal=losses["a"])[["a", "a_cal", "b", "c"]]
    table = mcs.model_confidence_set(twin, reps=200, seed=7).set_index("MODEL")
    alone = mcs.model_confidence_set(losses, reps=200, seed=7).set_index("MODEL")
    assert table.loc["a_cal"].tolist() == table.loc["a"].tolist() == alone.loc["a"].tolist()
    single = mcs.model_confidence_set(losses[["a"]].assign(b=losses["a"]), reps=50)
    assert single["IN_MCS"].all() and (single["P_VALUE"] == 1.0).all()
    assert all(np.isnan(ct.dq_test([1, 0, 1], [0.0, 1.0, 2.0], 0.5)))  # fewer rows than lags


def _reference_row(part: pd.DataFrame, tau: float, pooled: bool) -> list[float]:
    """The tests of one group from the single-sequence functions: per country when pooled
    (transitions and DQ rows inside each country only), else on the one sequence."""
    seqs = [
        ((g["ACTUAL"] <= g["FORECAST"]).to_numpy(float), g["FORECAST"].to_numpy(float))
        for _, g in part.groupby("COUNTRY", sort=True)
    ]
    hits = np.concatenate([h for h, _ in seqs])
    row = ct.coverage_test_row(hits, np.concatenate([f for _, f in seqs]), tau)
    if pooled:
        counts = sum(cs._transitions(h) for h, _ in seqs)
        designs = [cs._dq_design(h, f, tau) for h, f in seqs]
        ind = cs._independence(counts)
        dq = cs._dq(
            np.vstack([x for x, _ in designs]), np.concatenate([t for _, t in designs]), tau
        )
        cc = row["LR_UC"] + ind[0]
        row.update(LR_IND=ind[0], P_IND=ind[1], DQ=dq[0], P_DQ=dq[1], LR_CC=cc)
        row["P_CC"] = stats.chi2.sf(cc, 2)
    return [float(v) for v in row.values()]


@pytest.mark.parametrize(
    "by", [["MODEL", "HORIZON", "QUANTILE"], ["MODEL", "COUNTRY", "HORIZON", "QUANTILE"]]
)
def test_vectorised_table_equals_the_tests_group_by_group(by):
    # edge cases in one table: a model that never hits (independence undefined), one whose
    # forecast is constant (DQ rank 5), countries with too few rows for DQ, a gap in a series
    rng = np.random.default_rng(11)
    frame = _frame(rng, countries=("AT", "BE", "CY"), n=30)
    frame.loc[frame["MODEL"] == "b", "FORECAST"] = -50.0
    frame.loc[(frame["COUNTRY"] == "CY") & (frame["WINDOW_END"] > "2018-06-01"), "ACTUAL"] = np.nan
    frame.loc[frame.sample(frac=0.05, random_state=1).index, "FORECAST"] = np.nan
    frame.loc[frame["MODEL"] == "a", "FORECAST"] += rng.normal(
        size=int((frame["MODEL"] == "a").sum())
    )
    table = ct.coverage_tests(frame, by=by)
    scored = frame.loc[frame["ACTUAL"].notna() & frame["FORECAST"].notna()]
    scored = scored.sort_values(["COUNTRY", "WINDOW_END"], kind="stable")
    assert len(table) == scored.groupby(by).ngroups
    for row in table.itertuples(index=False):
        mask = np.logical_and.reduce([scored[c] == getattr(row, c) for c in by])
        expected = _reference_row(scored.loc[mask], row.QUANTILE, "COUNTRY" not in by)
        got = [float(getattr(row, c)) for c in ct.TEST_COLUMNS]
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, equal_nan=True)
    # model b never hits: LR_ind 0 (not undefined), so LR_cc is its LR_uc
    never = table.loc[table["MODEL"] == "b"]
    assert (never["LR_IND"] == 0.0).all() and (never["LR_CC"] == never["LR_UC"]).all()
    assert table["DQ"].notna().any()


@pytest.mark.parametrize("dtype", ["category", "string"])
def test_origin_losses_equal_the_pivot_table_bit_for_bit(dtype):
    """The losses from integer codes are pandas' pivot_table (mean per key and model, rows
    some model lacks dropped, mean per origin) to the last bit: with rows missing, and (its
    mean needed) a (key, model) with two rows and a missing key."""
    rng = np.random.default_rng(4)
    frame = _frame(rng, countries=("AT", "BE", "CZ"), n=40).astype({"MODEL": dtype})
    frame["FORECAST"] += rng.normal(size=len(frame)) * 1e-3  # losses with all their bits
    frame.loc[rng.choice(len(frame), 25, replace=False), "FORECAST"] = np.nan

    def pivot(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.loc[(rows["HORIZON"] == 1) & rows["ACTUAL"].notna() & rows["FORECAST"].notna()]
        u, q = rows["ACTUAL"] - rows["FORECAST"], rows["QUANTILE"]
        rows = rows.assign(LOSS=np.maximum(q * u, (q - 1.0) * u))
        key = ["COUNTRY", "QUANTILE", "WINDOW_END"]
        wide = rows.pivot_table(index=key, columns="MODEL", values="LOSS", observed=True)
        return wide.dropna().groupby(level="WINDOW_END").mean().sort_index()

    twice = pd.concat([frame, frame.iloc[:3].assign(ACTUAL=0.5)], ignore_index=True)
    unknown = frame.astype({"COUNTRY": "string"})
    unknown.loc[7, "COUNTRY"] = pd.NA
    for rows in (frame, twice, unknown, frame.iloc[:0]):
        got = mcs.origin_losses(rows, 1)
        pd.testing.assert_frame_equal(got, pivot(rows), check_exact=True)
        assert got.to_numpy().tobytes() == pivot(rows).to_numpy().tobytes()


@pytest.mark.parametrize("model_dtype", ["string", "category"])
def test_the_mcs_of_one_model_is_what_the_general_path_gives(model_dtype):
    """One model: no losses are averaged (the set is that model), and the origins counted
    are those the pivot keeps (missing keys, unscored rows and repeats as the general path)."""
    rng = np.random.default_rng(6)
    frame = _frame(rng, n=12).query("MODEL == 'a'").reset_index(drop=True)
    later = frame.assign(HORIZON=3, ACTUAL=np.nan)  # a horizon without a scored row
    frame = pd.concat([frame, later, frame.iloc[:2]], ignore_index=True)  # and repeated rows
    frame.loc[3, "ACTUAL"] = np.nan  # unscored
    frame.loc[[5, 17], "COUNTRY"] = None  # a missing key: the pivot drops the row
    frame.loc[frame["WINDOW_END"] == frame["WINDOW_END"].max(), "QUANTILE"] = np.nan  # an origin
    frame = frame.astype({"MODEL": model_dtype, "COUNTRY": "string"})
    got = mcs.mcs_table(frame, reps=50)
    losses = mcs.origin_losses(frame, 1)
    want = mcs.model_confidence_set(losses, reps=50)
    want.insert(0, "HORIZON", 1)
    want.insert(2, "N_ORIGINS", len(losses))
    pd.testing.assert_frame_equal(got, want)
    assert got["N_ORIGINS"].tolist() == [11]
