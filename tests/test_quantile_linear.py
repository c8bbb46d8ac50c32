"""Parity of the batched exact LP solver with scikit-learn/HiGHS; kernel-form QP oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REAL_DATA
from scipy.optimize import minimize
from sklearn.linear_model import QuantileRegressor

from pipeline.models.solvers.common import pinball_per_quantile
from pipeline.models.solvers.quantile_kernel import solve_kernel_qr
from pipeline.models.solvers.quantile_linear import fit_quantile_lp

QS = (0.05, 0.1, 0.5, 0.9, 0.95)
DATA = REAL_DATA


def sklearn_objective(X: np.ndarray, y: np.ndarray, w: np.ndarray, q: float) -> float:
    """Weighted mean pinball of scikit-learn's HiGHS solution (X includes the intercept)."""
    keep = w > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = QuantileRegressor(quantile=q, alpha=0.0, solver="highs", fit_intercept=False)
        model.fit(X[keep], y[keep], sample_weight=w[keep])
    pred = X @ model.coef_
    return float(pinball_per_quantile(y[None], pred[None, :, None], [q], w[None])[0, 0])


def assert_parity(X: np.ndarray, y: np.ndarray, w: np.ndarray, qs=QS, X_fit=None) -> None:
    coef = fit_quantile_lp(X if X_fit is None else X_fit, y, qs, w)
    ours = pinball_per_quantile(y, np.einsum("bnp,bqp->bnq", X, coef), qs, w)
    for b in range(X.shape[0]):
        for j, q in enumerate(qs):
            ref = sklearn_objective(X[b], y[b], w[b], q)
            # relative 1e-6, with an absolute floor for problems whose optimum is 0
            tol = 1e-6 * abs(ref) + 1e-9 * (1.0 + np.abs(y[b]).max())
            assert abs(ours[b, j] - ref) <= tol, (b, q, ours[b, j], ref)


def design(rng: np.random.Generator, B: int, n: int, p: int) -> np.ndarray:
    return np.concatenate([np.ones((B, n, 1)), rng.standard_normal((B, n, p - 1))], -1)


def test_parity_random_with_ragged_weights() -> None:
    rng = np.random.default_rng(0)
    B, n, p = 12, 60, 13
    X = design(rng, B, n, p)
    y = X[..., 1] - 0.5 * X[..., 2] + rng.standard_t(3, (B, n))
    w = rng.uniform(0.5, 2.0, (B, n))
    w[:, : rng.integers(0, 12)] = 0.0  # ragged windows: leading padding rows
    X_fit = X.copy()
    X_fit[w == 0] = np.nan  # padding content must not matter
    assert_parity(X, y, w, X_fit=X_fit)
    # every returned vertex carries an exact optimality certificate on generic data
    _, info = fit_quantile_lp(X_fit, y, QS, w, return_info=True)
    assert info.certified.all()


def hicp_windows(n_windows: int, p: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of prc_hicp_manr_CP00 (h = 1): n = 48..59 rows padded to 59, p lags + intercept."""
    df = pd.read_csv(DATA, usecols=["TIME", "COUNTRY", "prc_hicp_manr_CP00"])
    rng = np.random.default_rng(1)
    Xs, ys, ws = [], [], []
    countries = sorted(df["COUNTRY"].unique())
    while len(Xs) < n_windows:
        c = countries[rng.integers(len(countries))]
        s = df.loc[df["COUNTRY"] == c, "prc_hicp_manr_CP00"].dropna().to_numpy()
        n = int(rng.integers(48, 60))
        if len(s) < n + p + 2:
            continue
        T = int(rng.integers(n + p, len(s) - 1))
        t = np.arange(T - n, T)  # training origins t, target y_{t+1}
        X = np.stack([s[t - lag] for lag in range(p)], 1)
        pad = 59 - n
        Xs.append(np.vstack([np.zeros((pad, p)), X]))
        ys.append(np.concatenate([np.zeros(pad), s[t + 1]]))
        ws.append(np.concatenate([np.zeros(pad), np.ones(n)]))
    X = np.stack(Xs)
    return np.concatenate([np.ones((*X.shape[:2], 1)), X], -1), np.stack(ys), np.stack(ws)


def test_parity_real_hicp_windows() -> None:
    X, y, w = hicp_windows(10)
    assert_parity(X, y, w, qs=(0.1, 0.5, 0.9))
    _, info = fit_quantile_lp(X, y, (0.1, 0.5, 0.9), w, return_info=True)
    assert info.certified.mean() >= 0.9  # real data has ties; the rest hold a 1e-12 gap


def test_parity_degenerate_constant_collinear_ties() -> None:
    rng = np.random.default_rng(2)
    n, p = 50, 6
    const = np.ones((n, p))  # constant series: every lag equals the intercept
    y_const = np.full(n, 2.5)
    coll = design(rng, 1, n, p)[0]
    coll[:, 3] = coll[:, 2]  # duplicated lag
    coll[:, 4] = 2.0 * coll[:, 1] - coll[:, 2]  # exact linear combination
    y_coll = coll[:, 1] + rng.standard_normal(n)
    ties = np.round(design(rng, 1, n, p)[0])  # integer design and target: many ties
    y_ties = np.round(ties[:, 1] + rng.standard_normal(n))
    X = np.stack([const, coll, ties])
    y = np.stack([y_const, y_coll, y_ties])
    assert_parity(X, y, np.ones_like(y))
    coef = fit_quantile_lp(X[:1], y[:1], (0.5,))
    assert np.allclose(np.ones((1, p)) @ coef[0, 0], 2.5)


def test_batched_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    X = design(rng, 6, 55, 8)
    y = X[..., 1] + rng.standard_normal((6, 55))
    batched = fit_quantile_lp(X, y, (0.1, 0.5, 0.9))
    single = np.concatenate(
        [fit_quantile_lp(X[b : b + 1], y[b : b + 1], (0.1, 0.5, 0.9)) for b in range(6)]
    )
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-9)


def _primal_exact(K, U, y, tau, lam):
    """Oracle: epigraph form of mean pinball + lam c'Kc solved by SLSQP (independent code)."""
    n, k = U.shape
    L = np.linalg.cholesky(K + 1e-10 * np.eye(n))  # f = L g, penalty lam |g|^2

    def obj(z):
        g, t = z[:n], z[n + k :]
        return t.mean() + lam * g @ g

    def resid(z):
        return y - L @ z[:n] - U @ z[n : n + k]

    cons = [
        {"type": "ineq", "fun": lambda z: z[n + k :] - tau * resid(z)},
        {"type": "ineq", "fun": lambda z: z[n + k :] - (tau - 1.0) * resid(z)},
    ]
    z0 = np.concatenate([np.zeros(n + k), np.abs(y)])
    res = minimize(
        obj, z0, constraints=cons, method="SLSQP", options={"maxiter": 500, "ftol": 1e-12}
    )
    return res.fun


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_kernel_qr_matches_primal_oracle(eps: float) -> None:
    rng = np.random.default_rng(4)
    n, d = 25, 3
    Z = rng.standard_normal((n, d))
    K = Z @ Z.T + np.exp(-0.5 * ((Z[:, None] - Z[None]) ** 2).sum(-1))
    U = np.ones((n, 1))
    y = Z[:, 0] + 0.5 * rng.standard_normal(n)
    tau, lam = 0.3, 0.05
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    c, g = solve_kernel_qr(
        t(K)[None], t(U)[None], t(y)[None], t(np.ones(n))[None], t([tau]), t([[[lam]]]), eps
    )
    f = K @ c[0, 0, 0].numpy() + U @ g[0, 0, 0].numpy()
    pen = lam * c[0, 0, 0].numpy() @ K @ c[0, 0, 0].numpy()
    r = y - f
    if eps == 0.0:
        ours = np.maximum(tau * r, (tau - 1) * r).mean() + pen
        ref = _primal_exact(K, U, y, tau, lam)
        assert ours <= ref + 1e-7 and ours >= ref - 1e-5  # SLSQP is the less precise side
    else:
        # huberized: stationarity of the smoothed primal in f-space, checked via the
        # Moreau-envelope derivative psi(r) = clip(r / eps, tau - 1, tau)
        psi = np.clip(r / eps, tau - 1.0, tau)
        c0 = c[0, 0, 0].numpy()
        np.testing.assert_allclose(psi / n, 2 * lam * c0, atol=1e-8)  # representer condition
        assert abs(psi.sum()) < 1e-6  # intercept condition (psi amplifies errors by 1/eps)
