"""Penalized linear quantile regression (`lqr`) with random Fourier features, batched.

For each problem and quantile tau the model minimises, on the training window,

    (1/N) sum_i w_i rho_tau(y~_i - b0 - b1 x~_i1 - phi(x~_i)' beta) + lam * ||beta||^2

where x~ are the features standardized on the training window (weighted mean/std of the
rows with w > 0) and y~ = (y - mean) / std is the target standardized the same way, so the
penalty does not depend on the units of the target. phi(x~) = [x~, sqrt(2/D) cos(x~ W / bw
+ b)] appends D seeded random Fourier features approximating the RBF kernel
exp(-|x - x'|^2 / (2 bw^2)) (bw: median pairwise distance of the standardized training
rows, or a float). The intercept b0 is unpenalized; with `penalize_first_lag=False` so is
the first lag y_t (b1; otherwise x~_1 sits in the penalized part).

Alpha scale (convention): lam = alpha / N, i.e. alpha multiplies ||beta||^2 against the
*sum* of pinball losses of the standardized target. With N ~ 50 rows the seed's grid
7.5..35 then spans lam ~ 0.15..0.7: real HICP windows give forecasts that move with the
lags but are clearly shrunk, instead of the flat forecasts a literal lam = alpha gives.

The problem is solved in the n-dimensional dual (representer theorem: beta = phi' c), as
the box-constrained QP  max_v y~'v - v'Kv/(4 lam N) - (eps/2) sum v_i^2 / w_i,
v_i in [w_i (tau - 1), w_i tau], sum over unpenalized columns U'v = 0, K = phi phi'.
`solver="exact"`: eps = 0, the exact check loss. `solver="huberized"`: eps = `HUBER_EPS`,
which is exactly the check loss smoothed by its Moreau envelope (a Huber-type function,
quadratic on [(tau-1) eps, tau eps]); its dual is strongly convex. Both run through
`pipeline.models.solvers.quantile_kernel` (an interior point for the first alpha, crossing
over to the active-set method once near, then the active-set method warm-started along the
alphas, and for the refit from the chosen fit's residual signs), batched over problems, alphas and quantiles; the features phi come from
`pipeline.models.solvers.rff`.

When tau * N is an integer the intercept can be non-unique (a flat interval of the loss,
as for the sample median of an even count: every dual row on a bound). The active-set
method recognizes that case and takes the interval's analytic centre (the maximizer of the
sum of the log multipliers: where the interior point's central path ends); the few it does
not reach stay with the interior point, whose answer is a point inside the interval near
that centre, deterministically for a given input.

Alpha is chosen per quantile by time-ordered validation inside the window: fit on the first
n - validation_size rows with weight > 0, score the mean pinball on the last validation_size
ones, refit on all rows with the best alpha (first in `alphas` on ties). Scaling, bandwidth
and features use the whole training window (all of it is known at the origin).

Imports: numpy, torch and solvers/ (common, parameters, quantile_kernel, rff, rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.solvers.common import (
    as_batch,
    crossing_rate_batch,
    rearrange_quantiles,
    torch_single_thread,
)
from pipeline.models.solvers.parameters import (
    ALPHAS,
    BANDWIDTH,
    LQR_BATCH,
    LQR_DEFAULTS,
    RFF_FEATURES,
    SOLVER,
    VALIDATION_SIZE,
)
from pipeline.models.solvers.quantile_kernel import kernel_pinball, solve_kernel_qr
from pipeline.models.solvers.rff import lqr_features, median_bandwidth, rff_weights
from pipeline.models.solvers.rules import Rule, check_quantiles

MEDIAN = Rule(lambda v: v == "median", "'median' (the median heuristic) or a positive number")
HUBER_EPS = 1e-3  # smoothing threshold, in units of the standardized target
MIN_LAM = 1e-8  # alpha = 0 is solved as this tiny ridge (the dual needs lam > 0)
_PRIMAL_BLOCK = 8  # problems per pass of `_primal`: 8 x 3 x 1006 float64 sums fit in L2


@dataclass(frozen=True)
class LQRBatchResult:
    """Forecasts (B, m, Q) sorted along Q, chosen alpha (B, Q), crossing rate before sorting
    (B,), and the fitted state (arrays with leading dimension B) that `predict_lqr_state` uses."""

    pred: np.ndarray
    alpha: np.ndarray
    crossing: np.ndarray
    state: dict[str, np.ndarray]


def check_lqr_params(
    quantiles: Sequence[float],
    alphas: Sequence[float],
    solver: str,
    rff_features: int,
    rff_bandwidth: str | float,
    validation_size: int,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate LQR parameters with the Rules the config declares (pipeline.models.plugins.builtin.lqr);
    a ConfigError (a ValueError) names the parameter; returns (quantiles, alphas)."""
    qs = check_quantiles(quantiles)
    al = tuple(float(a) for a in ALPHAS.check("alphas", list(alphas)))
    SOLVER.check("solver", solver)
    RFF_FEATURES.check("rff_features", rff_features)
    VALIDATION_SIZE.check("validation_size", validation_size)
    (MEDIAN if isinstance(rff_bandwidth, str) else BANDWIDTH).check("rff_bandwidth", rff_bandwidth)
    return qs, al


def _prepare(
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    rff_features: int,
    rff_bandwidth: str | float,
    penalize_first_lag: bool,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Standardization, bandwidth and features of one chunk of training windows."""
    Xt, yt, wt = (torch.from_numpy(a) for a in (X, y, w))
    act = wt > 0
    N = wt.sum(-1).clamp(min=1e-300)
    x_mean = (Xt * wt[..., None]).sum(1) / N[:, None]
    x_sd = (((Xt - x_mean[:, None]) ** 2 * wt[..., None]).sum(1) / N[:, None]).sqrt()
    x_sd = torch.where(x_sd > 1e-12 * (1.0 + x_mean.abs()), x_sd, torch.ones_like(x_sd))
    y_mean = (yt * wt).sum(-1) / N
    y_sd = (((yt - y_mean[:, None]) ** 2 * wt).sum(-1) / N).sqrt()
    y_sd = torch.where(y_sd > 1e-12 * (1.0 + y_mean.abs()), y_sd, torch.ones_like(y_sd))
    Xs = (Xt - x_mean[:, None]) / x_sd[:, None] * act[..., None]
    if rff_bandwidth == "median":
        bw = median_bandwidth(Xs, act)
    else:
        bw = torch.full((X.shape[0],), float(rff_bandwidth), dtype=torch.float64)
    W, b = (torch.from_numpy(a) for a in rff_weights(X.shape[2], rff_features, seed))
    phi, U = lqr_features(Xs, W, b, bw, penalize_first_lag, act)
    return {
        "phi": phi,
        "U": U,
        "ys": (yt - y_mean[:, None]) / y_sd[:, None] * act,
        "w": wt,
        "x_mean": x_mean,
        "x_scale": x_sd,
        "y_mean": y_mean,
        "y_scale": y_sd,
        "bandwidth": bw,
        "W": W,
        "b": b,
    }


def _fit_chunk(
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    tau: torch.Tensor,
    alphas: torch.Tensor,
    eps: float,
    validation_size: int,
    opts: dict,
) -> dict[str, torch.Tensor]:
    """Alpha selection and final fit for one chunk; returns the state as tensors."""
    f = _prepare(X, y, w, **opts)
    phi, U, ys, wt = f["phi"], f["U"], f["ys"], f["w"]
    K = phi @ phi.transpose(1, 2)
    B, Q = X.shape[0], tau.shape[0]
    act = wt > 0
    if alphas.numel() > 1:
        rank = act.cumsum(-1) - 1
        n_fit = (act.sum(-1) - validation_size)[:, None]
        w_fit = torch.where(rank < n_fit, wt, 0.0)
        w_val = wt - w_fit
        lam = (alphas[None, :] / w_fit.sum(-1, keepdim=True)).clamp(min=MIN_LAM)
        c, nu = solve_kernel_qr(K, U, ys, w_fit, tau, lam[..., None], eps)  # (B,A,Q,n), (B,A,Q,k)
        fit = c @ K[:, None] + nu @ U.transpose(1, 2)[:, None]
        score = kernel_pinball(ys[:, None, None], fit, tau, w_val[:, None, None])  # (B,A,Q)
        best = score.argmin(1)  # first alpha on ties
        # the refit starts from the chosen fit's sides: a row above its fit (beyond the Huber
        # band, where the dual is free) at its upper bound, below at its lower one
        pick = best[:, None, :, None].expand(B, 1, Q, fit.shape[-1])
        resid = torch.gather(ys[:, None, None] - fit, 1, pick)
        band = max(eps, 1e-9) * tau[:, None]
        lower, upper = resid <= band - max(eps, 1e-9), resid >= band
        # and the k rows nearest their fit free (the k unpenalized coefficients need k)
        gap = torch.where(act[:, None, None], resid.abs(), torch.inf)
        near = torch.topk(gap, U.shape[-1], -1, largest=False).indices
        on = torch.zeros_like(lower).scatter_(-1, near, True)
        start = (lower & ~on, upper & ~on)
    else:
        best = torch.zeros(B, Q, dtype=torch.long)
        start = None
    alpha = alphas[best]  # (B,Q)
    lam = (alpha / wt.sum(-1, keepdim=True).clamp(min=1.0)).clamp(min=MIN_LAM)
    # (B,1,Q,n): alpha_q for tau_q
    c, nu = solve_kernel_qr(K, U, ys, wt, tau, lam[:, None, :], eps, start)
    c, nu = c[:, 0], nu[:, 0]
    return {
        "beta": _primal(c, phi),
        "gamma": nu,  # unpenalized coefficients (B,Q,k)
        "alpha": alpha,
        "x_mean": f["x_mean"],
        "x_scale": f["x_scale"],
        "y_mean": f["y_mean"],
        "y_scale": f["y_scale"],
        "bandwidth": f["bandwidth"],
    }


def _primal(c: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """beta = phi' c (B,Q,P) from c (B,Q,n), summed over rows in order: a batched GEMM with Q
    rows gives bits that depend on the batch size. A few problems at a time, so that their
    (Q, P) sums stay in the cache over the n passes (5x faster than whole-batch sums)."""
    B, Q, n = c.shape
    beta = torch.empty(B, Q, phi.shape[-1], dtype=phi.dtype)
    tmp = torch.empty(_PRIMAL_BLOCK, Q, phi.shape[-1], dtype=phi.dtype)
    for lo in range(0, B, _PRIMAL_BLOCK):
        cb, pb, out = (
            c[lo : lo + _PRIMAL_BLOCK],
            phi[lo : lo + _PRIMAL_BLOCK],
            beta[lo : lo + _PRIMAL_BLOCK],
        )
        t = tmp[: out.shape[0]]
        torch.mul(cb[:, :, 0, None], pb[:, None, 0], out=out)
        for i in range(1, n):
            out.add_(torch.mul(cb[:, :, i, None], pb[:, None, i], out=t))
    return beta


def predict_lqr_state(
    state: dict[str, np.ndarray],
    X_new: np.ndarray,
    *,
    rff_features: int,
    penalize_first_lag: bool,
    seed: int,
) -> np.ndarray:
    """Raw (unsorted) forecasts (B, m, Q) of a fitted state for X_new (B, m, d)."""
    Xn = torch.from_numpy(np.asarray(X_new, dtype=np.float64))
    st = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in state.items()}
    Xs = (Xn - st["x_mean"][:, None]) / st["x_scale"][:, None]
    W, b = (torch.from_numpy(a) for a in rff_weights(Xn.shape[2], rff_features, seed))
    phi, U = lqr_features(Xs, W, b, st["bandwidth"], penalize_first_lag)
    # products and sums, not batched GEMMs (whose bits depend on the batch size)
    f = (phi[:, :, None, :] * st["beta"][:, None]).sum(-1) + (
        U[:, :, None, :] * st["gamma"][:, None]
    ).sum(-1)
    return (f * st["y_scale"][:, None, None] + st["y_mean"][:, None, None]).numpy()


def fit_predict_lqr_batch(
    X: np.ndarray,
    y: np.ndarray,
    X_new: np.ndarray,
    *,
    quantiles: Sequence[float],
    alphas: Sequence[float] = LQR_DEFAULTS["alphas"],
    solver: str = LQR_DEFAULTS["solver"],
    rff_features: int = LQR_DEFAULTS["rff_features"],
    rff_bandwidth: str | float = LQR_DEFAULTS["rff_bandwidth"],
    validation_size: int = LQR_DEFAULTS["validation_size"],
    penalize_first_lag: bool = LQR_DEFAULTS["penalize_first_lag"],
    seed: int = LQR_DEFAULTS["seed"],
    w: np.ndarray | None = None,
    chunk: int = LQR_BATCH,
) -> LQRBatchResult:
    """Fit B independent LQR problems and forecast X_new.

    X (B, n, d) training features in time order, y (B, n), X_new (B, m, d), w (B, n)
    nonnegative row weights (0 = padding). Every problem needs more than validation_size
    rows with w > 0 when len(alphas) > 1. See the module docstring for the objective.
    """
    qs, al = check_lqr_params(
        quantiles, alphas, solver, rff_features, rff_bandwidth, validation_size
    )
    X, y, w = as_batch(X, y, w)
    X_new = np.asarray(X_new, dtype=np.float64)
    if X_new.ndim != 3 or X_new.shape[0] != X.shape[0] or X_new.shape[2] != X.shape[2]:
        raise ValueError(
            f"X_new must have shape (B, m, d) = ({X.shape[0]}, m, {X.shape[2]}); got {X_new.shape}"
        )
    n_act = (w > 0).sum(-1)
    if len(al) > 1 and np.any(n_act <= validation_size):
        raise ValueError(
            f"validation_size must be smaller than the training rows of every problem; got "
            f"validation_size={validation_size} with as few as {int(n_act.min())} rows"
        )
    opts = {
        "rff_features": rff_features,
        "rff_bandwidth": rff_bandwidth,
        "penalize_first_lag": penalize_first_lag,
        "seed": seed,
    }
    eps = HUBER_EPS if solver == "huberized" else 0.0
    tau = torch.tensor(qs, dtype=torch.float64)
    alphas_t = torch.tensor(al, dtype=torch.float64)
    parts = []
    with torch.no_grad(), torch_single_thread():
        for lo in range(0, X.shape[0], chunk):
            sl = slice(lo, lo + chunk)
            parts.append(_fit_chunk(X[sl], y[sl], w[sl], tau, alphas_t, eps, validation_size, opts))
    state = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    raw = predict_lqr_state(
        state, X_new, rff_features=rff_features, penalize_first_lag=penalize_first_lag, seed=seed
    )
    return LQRBatchResult(
        pred=rearrange_quantiles(raw),
        alpha=state["alpha"],
        crossing=crossing_rate_batch(raw),
        state=state,
    )
