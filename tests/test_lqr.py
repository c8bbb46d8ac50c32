"""LQR: solvers vs oracles, alpha selection, no look-ahead, calibration, real data, I/O."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REAL_DATA
from scipy.optimize import minimize

from pipeline.models.estimators import LQR
from pipeline.models.solvers.common import pinball_per_quantile
from pipeline.models.solvers.lqr import HUBER_EPS, fit_predict_lqr_batch

QS = (0.1, 0.5, 0.9)
DATA = REAL_DATA
SMALL = {"rff_features": 40, "alphas": (0.5, 2.0, 10.0), "validation_size": 10}


def ar1(B: int, n: int, d: int, seed: int, phi: float = 0.6):
    """B AR(1) paths with Student-t(5) shocks: lag features (B, n, d), targets, origin row."""
    rng = np.random.default_rng(seed)
    L = n + d + 61
    e = rng.standard_t(5, (B, L))
    y = np.zeros((B, L))
    for t in range(1, L):
        y[:, t] = phi * y[:, t - 1] + e[:, t]
    y = y[:, 60:]
    t = np.arange(d - 1, d - 1 + n)
    X = np.stack([y[:, t - lag] for lag in range(d)], -1)
    T = d - 1 + n
    X_new = np.stack([y[:, [T - lag]] for lag in range(d)], -1)
    return X, y[:, t + 1], X_new, y[:, T + 1]


def smoothed_objective(z, Phi, U, y, tau, lam, eps):
    """Moreau-smoothed mean pinball + lam |beta|^2 over (beta, gamma): the scipy oracle."""
    P = Phi.shape[1]
    r = y - Phi @ z[:P] - U @ z[P:]
    psi = np.clip(r / eps, tau - 1.0, tau)
    loss = np.where(r > tau * eps, tau * r - tau**2 * eps / 2, 0.0)
    loss = np.where(r < (tau - 1) * eps, (tau - 1) * r - (tau - 1) ** 2 * eps / 2, loss)
    loss = np.where((r >= (tau - 1) * eps) & (r <= tau * eps), r**2 / (2 * eps), loss)
    n = len(y)
    grad = np.concatenate([-Phi.T @ psi / n + 2 * lam * z[:P], -U.T @ psi / n])
    return loss.mean() + lam * z[:P] @ z[:P], grad


@pytest.mark.parametrize("solver", ["huberized", "exact"])
def test_single_alpha_fit_is_optimal(solver: str) -> None:
    """The state's (beta, gamma) is optimal for the documented objective (scipy oracle)."""
    X, y, _, _ = ar1(1, 40, 3, seed=0)
    res = fit_predict_lqr_batch(
        X, y, X[:, :1], quantiles=QS, alphas=(2.0,), solver=solver, rff_features=30, seed=1
    )
    st = {k: v[0] for k, v in res.state.items()}
    Xs = (X[0] - st["x_mean"]) / st["x_scale"]
    ys = (y[0] - st["y_mean"]) / st["y_scale"]
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((3, 30)), rng.uniform(0, 2 * np.pi, 30)
    Phi = np.hstack([Xs, np.sqrt(2 / 30) * np.cos(Xs @ W / st["bandwidth"] + b)])
    U = np.ones((40, 1))
    lam = 2.0 / 40
    eps = HUBER_EPS if solver == "huberized" else 1e-7
    for j, tau in enumerate(QS):
        ours_z = np.concatenate([st["beta"][j], st["gamma"][j]])
        ours = smoothed_objective(ours_z, Phi, U, ys, tau, lam, eps)[0]
        ref = minimize(
            smoothed_objective,
            np.zeros(Phi.shape[1] + 1),
            args=(Phi, U, ys, tau, lam, eps),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-10},
        )
        # ours is never worse than the oracle beyond solver noise
        assert ours <= ref.fun + 1e-6 * abs(ref.fun), (tau, ours, ref.fun)


def test_huberized_close_to_exact() -> None:
    X, y, X_new, _ = ar1(4, 50, 3, seed=1)
    a = fit_predict_lqr_batch(X, y, X_new, quantiles=QS, solver="huberized", **SMALL)
    b = fit_predict_lqr_batch(X, y, X_new, quantiles=QS, solver="exact", **SMALL)
    scale = y.std(axis=1)[:, None, None]
    assert np.all(np.abs(a.pred - b.pred) <= 0.05 * scale)


def test_alpha_selection_matches_brute_force_time_ordered_validation() -> None:
    X, y, X_new, _ = ar1(3, 48, 3, seed=2)
    v, alphas = 12, SMALL["alphas"]
    res = fit_predict_lqr_batch(X, y, X_new, quantiles=QS, **SMALL | {"validation_size": v})
    # brute force: for each alpha fit on the first n - v rows (full-window scaling is
    # reproduced by passing all rows with weight 0 on the validation rows) and score
    w_fit = np.ones_like(y)
    w_fit[:, -v:] = 0.0
    scores = []
    for a in alphas:
        r = fit_predict_lqr_batch(
            X, y, X[:, -v:], quantiles=QS, **SMALL | {"alphas": (a,)}, w=w_fit
        )
        scores.append(pinball_per_quantile(y[:, -v:], r.pred, QS))
    expected = np.asarray(alphas)[np.argmin(np.stack(scores), axis=0)]
    # the brute force scales on the first rows only, so allow rare near-tie flips
    assert np.mean(res.alpha == expected) >= 0.75


def test_no_look_ahead_data_after_origin_is_ignored() -> None:
    """Rows after the origin (weight 0) may hold anything: forecasts and alphas identical.

    51 real rows: tau * N is never an integer, so the optimum (intercept included) is unique
    and the trimmed problem must give the same forecasts, not just an equally good one."""
    X, y, X_new, _ = ar1(3, 61, 3, seed=3)
    w = np.ones_like(y)
    w[:, -10:] = 0.0
    base = fit_predict_lqr_batch(X, y, X_new, quantiles=QS, w=w, **SMALL)
    X2, y2 = X.copy(), y.copy()
    X2[:, -10:] = 50.0
    y2[:, -10:] = -1e3
    pert = fit_predict_lqr_batch(X2, y2, X_new, quantiles=QS, w=w, **SMALL)
    # equal up to BLAS rounding (kernels may differ with memory alignment): 1e-13 seen
    np.testing.assert_allclose(pert.pred, base.pred, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(pert.alpha, base.alpha)
    cut = fit_predict_lqr_batch(X[:, :-10], y[:, :-10], X_new, quantiles=QS, **SMALL)
    # same problem, different padding: equal up to the interior-point stopping tolerance
    np.testing.assert_allclose(cut.pred, base.pred, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(cut.alpha, base.alpha)


def test_batch_equals_one_at_a_time_and_round_trip(tmp_path) -> None:
    X, y, X_new, _ = ar1(3, 45, 4, seed=4)
    X_new = np.concatenate([X_new, 5 * X[:, :3]], 1)
    params = {"quantiles": QS, "penalize_first_lag": False, "seed": 7, **SMALL}
    res = fit_predict_lqr_batch(X, y, X_new, **params)
    assert res.crossing.max() > 0  # far-out rows cross before rearrangement
    assert np.all(np.diff(res.pred, axis=-1) >= 0)
    for b in range(3):
        m = LQR(**params).fit(X[b], y[b])
        np.testing.assert_allclose(m.predict(X_new[b]), res.pred[b], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(m.alpha_, res.alpha[b])
        assert m.crossing_rate(X_new[b]) == pytest.approx(res.crossing[b])
        m.save(tmp_path / f"m{b}.npz")
        loaded = LQR.load(tmp_path / f"m{b}.npz")
        np.testing.assert_array_equal(loaded.predict(X_new[b]), m.predict(X_new[b]))


def test_calibration_on_ar1() -> None:
    """Coverage over independent series: 4 binomial standard errors sqrt(tau(1-tau)/B) plus
    0.05 for the finite-sample and shrinkage bias of a penalized fit on n = 60 rows."""
    B = 256
    X, y, X_new, y_next = ar1(B, 60, 2, seed=5)
    res = fit_predict_lqr_batch(X, y, X_new, quantiles=QS, **SMALL)
    for j, q in enumerate(QS):
        cover = np.mean(y_next <= res.pred[:, 0, j])
        assert abs(cover - q) <= 4 * np.sqrt(q * (1 - q) / B) + 0.05, (q, cover)


def test_real_hicp_defaults_give_sensible_forecasts() -> None:
    """Seed defaults (1000 RFF, alphas 7.5..35) on HICP windows: forecasts follow the data,
    neither flat nor wild."""
    df = pd.read_csv(DATA, usecols=["TIME", "COUNTRY", "prc_hicp_manr_CP00"])
    s = df.loc[df["COUNTRY"] == "DE", "prc_hicp_manr_CP00"].dropna().to_numpy()
    p, n, origins = 12, 59, np.arange(120, len(s) - 1, 8)
    X = np.stack(
        [np.stack([s[np.arange(T - n, T) - lag] for lag in range(p)], -1) for T in origins]
    )
    y = np.stack([s[np.arange(T - n, T) + 1] for T in origins])
    X_new = np.stack([[[s[T - lag] for lag in range(p)]] for T in origins])
    res = fit_predict_lqr_batch(X, y, X_new, quantiles=QS)
    med = res.pred[:, 0, 1]
    actual = s[origins + 1]
    assert np.corrcoef(med, actual)[0, 1] > 0.8  # not flat: tracks inflation
    assert np.all(np.abs(med - actual) < 3 * s.std())  # not wild
    assert np.all(res.pred[:, 0, 2] - res.pred[:, 0, 0] > 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alphas": (1.0, -0.5)}, r"'alphas\[1\]': expected a penalty >= 0"),
        ({"alphas": ()}, "'alphas': expected a non-empty list"),
        ({"quantiles": (0.1, 1.0)}, "expected a quantile strictly inside"),
        ({"solver": "admm"}, "'solver': expected one of"),
        ({"rff_bandwidth": "mean"}, "'rff_bandwidth': expected 'median'"),
        ({"rff_bandwidth": -1.0}, "'rff_bandwidth': expected a positive number"),
        ({"rff_features": -1}, "'rff_features': expected an integer >= 0"),
        ({"validation_size": 0}, "'validation_size': expected an integer >= 1"),
        ({"validation_size": 30}, "validation_size must be smaller"),
    ],
)
def test_bad_parameters(kwargs, match) -> None:
    params = {"quantiles": QS, **SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        LQR(**params).fit(np.random.default_rng(0).standard_normal((30, 2)), np.arange(30.0))
