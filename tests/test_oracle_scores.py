"""The scores against independent implementations on seeded random data: pinball loss and
relative pinball as scikit-learn's mean_pinball_loss, the quantile CRPS as the kernel form
of an ensemble's CRPS (Gneiting and Raftery 2007, eq. 21), coverage and the central
interval as direct numpy, and the pinball decomposition's recalibrated and climatological
scores as linear programs solved by scipy's HiGHS (an oracle independent of both the
bisection and model_diagnostics' PAV)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from forecast_frames import forecast_block
from scipy import sparse
from scipy.optimize import linprog
from sklearn.metrics import mean_pinball_loss

from pipeline.evaluation import metrics as ev
from pipeline.evaluation.decomposition import decompose_pinball, pinball_decomposition
from pipeline.schema import conform_forecasts

LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


def random_table(seed: int, *, n_origins: int = 30, models=("a", "b", "ar_qr")) -> pd.DataFrame:
    """Forecast rows of several models, countries and horizons: rounded values (ties of y
    and F, so y == F occurs), some crossing fans, missing actuals and forecasts."""
    rng = np.random.default_rng(seed)
    ends = pd.date_range("2010-01-01", periods=n_origins, freq="MS")
    rows = []
    for model in models:
        for country in ("AT", "BE", "CY"):
            for horizon in (1, 3):
                y = rng.normal(size=n_origins).round(1)
                spread = rng.uniform(0.5, 2.0)
                for level in LEVELS:
                    f = (spread * (level - 0.5) * 3 + rng.normal(0, 0.5, n_origins)).round(1)
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
    frame.loc[rng.choice(len(frame), len(frame) // 20, replace=False), "ACTUAL"] = np.nan
    frame.loc[rng.choice(len(frame), len(frame) // 20, replace=False), "FORECAST"] = np.nan
    return conform_forecasts(frame)


def _scored(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.loc[frame["ACTUAL"].notna() & frame["FORECAST"].notna()]


@pytest.mark.parametrize("seed", range(3))
def test_pinball_equals_sklearn_mean_pinball_loss(seed):
    frame = random_table(seed)
    table = ev.pinball(frame)
    scored = _scored(frame)
    assert len(table) == scored.groupby(["MODEL", "HORIZON", "QUANTILE"]).ngroups
    for row in table.itertuples(index=False):
        part = scored[
            (scored["MODEL"] == row.MODEL)
            & (scored["HORIZON"] == row.HORIZON)
            & (scored["QUANTILE"] == row.QUANTILE)
        ]
        want = mean_pinball_loss(part["ACTUAL"], part["FORECAST"], alpha=row.QUANTILE)
        assert len(part) == row.N
        assert pytest.approx(want, rel=1e-12, abs=1e-15) == row.PINBALL


def test_relative_pinball_equals_sklearn_on_the_common_rows():
    frame = random_table(7)
    table = ev.relative_pinball(frame, benchmark="ar_qr")
    scored = _scored(frame)
    key = ["COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END"]
    bench = scored[scored["MODEL"] == "ar_qr"]
    for row in table.itertuples(index=False):
        part = scored[
            (scored["MODEL"] == row.MODEL)
            & (scored["HORIZON"] == row.HORIZON)
            & (scored["QUANTILE"] == row.QUANTILE)
        ]
        both = part.merge(bench, on=key, suffixes=("", "_B"))
        model = mean_pinball_loss(both["ACTUAL"], both["FORECAST"], alpha=row.QUANTILE)
        base = mean_pinball_loss(both["ACTUAL_B"], both["FORECAST_B"], alpha=row.QUANTILE)
        assert len(both) == row.N
        assert pytest.approx(model, rel=1e-12) == row.PINBALL
        assert pytest.approx(base, rel=1e-12) == row.BENCHMARK_PINBALL
        assert pytest.approx(model / base, rel=1e-12) == row.RELATIVE_PINBALL


def test_coverage_counts_ties_as_hits_and_skips_unscored_rows():
    frame = random_table(3)
    table = ev.coverage(frame)
    scored = _scored(frame)
    assert (scored["ACTUAL"] == scored["FORECAST"]).any()  # ties occur in this data
    want = (
        (scored["ACTUAL"] <= scored["FORECAST"])
        .groupby([scored["MODEL"], scored["HORIZON"], scored["QUANTILE"]], observed=True)
        .mean()
    )
    got = table.set_index(["MODEL", "HORIZON", "QUANTILE"])["COVERAGE"]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12)


def test_central_interval_equals_a_direct_pairing():
    """Each forecast's lowest- and highest-level rows (both scored), the actual inside the
    closed interval; a crossed fan (upper below lower) never covers and has negative width."""
    frame = random_table(4)
    table = ev.interval_coverage(frame)
    scored = _scored(frame)
    key = ["MODEL", "COUNTRY", "HORIZON", "WINDOW_END"]
    lo = scored[scored["QUANTILE"] == LEVELS[0]]
    hi = scored[scored["QUANTILE"] == LEVELS[-1]]
    both = lo.merge(hi[[*key, "FORECAST"]], on=key, suffixes=("_LO", "_HI"))
    inside = (both["FORECAST_LO"] <= both["ACTUAL"]) & (both["ACTUAL"] <= both["FORECAST_HI"])
    width = both["FORECAST_HI"] - both["FORECAST_LO"]
    assert (width < 0).any()  # crossed fans are in the data
    groups = [both["MODEL"], both["HORIZON"]]
    want = pd.DataFrame(
        {
            "N": inside.groupby(groups, observed=True).size(),
            "COVERAGE": inside.groupby(groups, observed=True).mean(),
            "WIDTH": width.groupby(groups, observed=True).mean(),
        }
    )
    got = table.set_index(["MODEL", "HORIZON"])
    assert got["N"].tolist() == want["N"].tolist()
    np.testing.assert_allclose(got["COVERAGE"], want["COVERAGE"], rtol=1e-12)
    np.testing.assert_allclose(got["WIDTH"], want["WIDTH"], rtol=1e-12, atol=1e-12)
    assert got["NOMINAL"].to_numpy() == pytest.approx(LEVELS[-1] - LEVELS[0])


@pytest.mark.parametrize("m", [1, 2, 5, 19])
def test_crps_of_an_ensemble_equals_the_kernel_form(m):
    """An ensemble of m members written as its quantiles at levels (i - 1/2)/m (the sorted
    members): 2 * mean_i rho(y - x_(i)) is exactly E|X - y| - E|X - X'| / 2, the CRPS of
    the ensemble's empirical distribution (Gneiting and Raftery 2007, eq. 21)."""
    rng = np.random.default_rng(m)
    levels = (np.arange(m) + 0.5) / m
    rows, want = [], []
    origins = pd.date_range("2012-01-01", periods=8, freq="MS")
    for origin in origins:
        members = np.sort(rng.normal(size=m).round(2))
        y = round(float(rng.normal()), 2)
        want.append(
            np.abs(members - y).mean() - 0.5 * np.abs(members[:, None] - members[None, :]).mean()
        )
        for level, x in zip(levels, members, strict=True):
            rows.append(
                {"TIME": origin + pd.DateOffset(months=1), "COUNTRY": "AT", "TARGET": "y",
                 "MODEL": "ens", "QUANTILE": level, "HORIZON": 1, "WINDOW_END": origin,
                 "WINDOW_START": origin - pd.DateOffset(months=11), "FORECAST": x,
                 "ACTUAL": y}
            )  # fmt: skip
    table = ev.crps(conform_forecasts(pd.DataFrame(rows)))
    assert table["N"].item() == len(origins)
    assert table["CRPS"].item() == pytest.approx(np.mean(want), rel=1e-12)


def _lp_min_pinball(y: np.ndarray, atoms: np.ndarray, tau: float) -> float:
    """min over g non-decreasing across the sorted distinct values of `atoms` of the mean
    pinball loss of y against g(atom), by a linear program: y_i - g_j(i) = u_i - v_i,
    u, v >= 0, minimise sum tau u + (1 - tau) v; g_j <= g_{j+1}."""
    values, which = np.unique(atoms, return_inverse=True)
    n, k = y.size, values.size
    # variables: g (k, free), u (n), v (n)
    cost = np.r_[np.zeros(k), np.full(n, tau), np.full(n, 1.0 - tau)]
    eye = sparse.identity(n, format="csr")
    pick = sparse.csr_matrix((np.ones(n), (np.arange(n), which)), shape=(n, k))
    a_eq = sparse.hstack([pick, eye, -eye]).tocsr()
    diff = sparse.diags([np.ones(k - 1), -np.ones(k - 1)], [0, 1], shape=(k - 1, k))
    a_ub = sparse.hstack([diff, sparse.csr_matrix((k - 1, 2 * n))]).tocsr() if k > 1 else None
    bounds = [(None, None)] * k + [(0, None)] * (2 * n)
    result = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(k - 1) if k > 1 else None,
        A_eq=a_eq,
        b_eq=y,
        bounds=bounds,
        method="highs",
    )
    assert result.status == 0, result.message
    return float(result.fun) / n


@pytest.mark.parametrize("seed", range(5))
def test_decomposition_equals_linear_programs(seed):
    """S* (the recalibrated score) is the isotonic LP's optimum in the forecasts, UNC the
    optimum over constants; MCB = S - S*, DSC = UNC - S*, both >= 0."""
    rng = np.random.default_rng(seed)
    for _ in range(6):
        n = int(rng.integers(3, 150))
        tau = float(rng.choice([0.05, 0.1, 0.5, 0.9, 0.95]))
        y = rng.standard_t(3, size=n).round(int(rng.integers(0, 2)))
        f = (y * rng.uniform(-0.5, 1.5) + rng.normal(size=n)).round(int(rng.integers(0, 2)))
        got = decompose_pinball(y, f, tau)
        score = mean_pinball_loss(y, f, alpha=tau)
        recalibrated = _lp_min_pinball(y, f, tau)
        uncertainty = _lp_min_pinball(y, np.zeros(n), tau)
        assert got["SCORE"] == pytest.approx(score, rel=1e-12)
        assert got["MISCALIBRATION"] == pytest.approx(score - recalibrated, abs=1e-7)
        assert got["DISCRIMINATION"] == pytest.approx(uncertainty - recalibrated, abs=1e-7)
        assert got["UNCERTAINTY"] == pytest.approx(uncertainty, abs=1e-7)
        assert got["MISCALIBRATION"] >= -1e-12 and got["DISCRIMINATION"] >= -1e-12


def test_the_decomposition_table_pools_countries_per_cell():
    frame = random_table(5, models=("a",))
    table = pinball_decomposition(frame)
    scored = _scored(frame)
    for row in table.itertuples(index=False):
        part = scored[(scored["HORIZON"] == row.HORIZON) & (scored["QUANTILE"] == row.QUANTILE)]
        y, f = part["ACTUAL"].to_numpy(), part["FORECAST"].to_numpy()
        recalibrated = _lp_min_pinball(y, f, row.QUANTILE)
        assert len(part) == row.N
        assert pytest.approx(mean_pinball_loss(y, f, alpha=row.QUANTILE)) == row.SCORE
        assert pytest.approx(recalibrated, abs=1e-7) == row.SCORE - row.MISCALIBRATION
        assert (
            pytest.approx(row.MISCALIBRATION - row.DISCRIMINATION + row.UNCERTAINTY, rel=1e-12)
            == row.SCORE
        )
