"""Batched exact linear quantile regression (Frisch-Newton interior point + vertex clean-up).

`fit_quantile_lp` solves B x Q independent problems

    min_beta  sum_i w_i * rho_tau(y_i - x_i' beta)

at once. Row weights are folded into the rows (rho is positively homogeneous), so a
zero-weight padding row is a zero row that cannot change the objective. Each problem is
preconditioned by its thin SVD (rank-deficient directions such as collinear lags or a
constant series are dropped, giving the minimum-norm optimum) and solved with the
Frisch-Newton primal-dual interior point method of Portnoy & Koenker (1997), Mehrotra
predictor-corrector, on the bounded dual LP

    max_a  y'a   s.t.  X'a = (1 - tau) X'1,  0 <= a <= 1.

Primal and dual iterates stay feasible, so z'x + w's is the exact duality gap. Exactness
comes from rounding to a vertex: at relative gap 1e-5 (`LEVELS`) the basis (the p rows
whose dual a_i is most interior) is solved and checked against the LP optimality conditions
(a subgradient certificate, `_vertex_cleanup`); certified problems stop there. The rest
(ties with a degenerate vertex, rank deficiency, a basis not yet identified) continue warm
to `tol` (1e-12 relative gap) and keep the better of the interior point and the vertex,
certified where possible. On real HICP windows ~all fits end certified.

Plain numpy (stacked LAPACK calls through np.linalg), no torch: a task of ar_qr then does not
import torch (1.1-1.3 CPU-s, most of a small study's train; issue 18).

The dual (kernel-form) solver of the penalized model `lqr` lives in
`pipeline.models.solvers.quantile_kernel`.

Imports: numpy and solvers/ (common, rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.models.solvers.common import as_batch
from pipeline.models.solvers.rules import check_quantiles

_STEP = 0.99995  # fraction of the way to the boundary (Portnoy & Koenker's choice)
LEVELS = (1e-5,)  # loose duality gaps at which vertices are tried (one level measured fastest)


@dataclass(frozen=True)
class LPInfo:
    """Diagnostics of a batched LP solve: per problem (B, Q)."""

    objective: np.ndarray  # weighted sum of pinball losses at the returned coefficients
    gap: np.ndarray  # interior-point duality gap when stopped
    certified: np.ndarray  # bool: the returned vertex passed the exact optimality test
    iterations: int  # interior-point iterations, summed over the tolerance levels


def _max_step(v: np.ndarray, u: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Largest t with v + t*dv >= 0 and u - t*dv >= 0 (u = upper slack), over the last axis."""
    room = np.where(dv < 0, v, u) / np.maximum(np.abs(dv), 1e-300)
    return np.minimum(room.min(axis=-1, keepdims=True), 1e20)


def _max_step_pos(v: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Largest t with v + t*dv >= 0 over the last axis (v >= 0 without upper bound)."""
    room = np.where(dv < 0, v / np.maximum(-dv, 1e-300), 1e20)
    return room.min(axis=-1, keepdims=True)


def _solve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve a x = b for stacked a (..., k, k) and b (..., k); returns (x, ok). A singular
    matrix fails alone (np.linalg.solve fails the whole stack): x is NaN there, ok False."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0], np.ones(a.shape[:-2], dtype=bool)
    except np.linalg.LinAlgError:
        pass
    x = np.full(b.shape, np.nan)
    ok = np.zeros(a.shape[:-2], dtype=bool)
    for i in np.ndindex(a.shape[:-2]):
        try:
            x[i] = np.linalg.solve(a[i], b[i])
            ok[i] = True
        except np.linalg.LinAlgError:
            pass
    return x, ok


def _frisch_newton(
    A: np.ndarray,
    c: np.ndarray,
    tau: np.ndarray,
    tol: np.ndarray,
    max_iter: int,
    state: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """min c'x s.t. A x = A 1 (1-tau), 0 <= x <= 1, all problems at once.

    A (B, p, n) is shared by the Q quantiles; c (B, Q, n), tau (Q,), tol (B, Q).
    Returns the iterate {x, s, y, z, w} (pass it back as `state` to continue to a tighter
    tolerance; beta = -y), the duality gap (B, Q) and the iteration count.
    """
    B, p, n = A.shape
    Q = tau.shape[0]
    iu, ju = np.triu_indices(p)
    # M = A diag(q) A' for all quantiles as one product with the row outer products
    # (upper triangle only): q (B,Q,n) @ P (B,n,T)
    P = np.ascontiguousarray((A[:, iu, :] * A[:, ju, :]).transpose(0, 2, 1))
    full = np.zeros((p, p), dtype=np.intp)
    full[iu, ju] = np.arange(iu.size)
    full[ju, iu] = np.arange(iu.size)
    full = full.reshape(-1)
    diag = np.arange(p)
    At = np.ascontiguousarray(A.transpose(0, 2, 1))

    if state is None:
        x = np.broadcast_to((1.0 - tau)[None, :, None], (B, Q, n)).copy()
        s = 1.0 - x
        y = c @ At  # A has orthonormal (or zero) rows: least-squares start
        r = c - y @ A
        r = r + 0.001 * (r == 0)
        z = np.maximum(r, 0.0)
        w = z - r
    else:
        x, s, y, z, w = (state[k] for k in "xsyzw")
    gap = (z * x).sum(-1) + (w * s).sum(-1)
    out = {k: v.copy() for k, v in zip("xsyzw", (x, s, y, z, w), strict=True)}
    gap_out = gap.copy()
    idx = np.arange(B)
    it = 0
    for it in range(1, max_iter + 1):
        done = gap <= tol
        live = ~done.all(-1)
        if not live.any():
            it -= 1
            break
        if live.sum() <= 0.5 * live.size:  # compact: drop finished problems
            _store(out, gap_out, idx, (x, s, y, z, w), gap)
            idx, A, At, P, c, tol = idx[live], A[live], At[live], P[live], c[live], tol[live]
            x, s, y, z, w, gap, done = (
                x[live],
                s[live],
                y[live],
                z[live],
                w[live],
                gap[live],
                done[live],
            )
        q = 1.0 / (z / x + w / s)
        r = z - w
        M = (q @ P)[..., full].reshape(*q.shape[:2], p, p)
        M[..., diag, diag] += 1e-300  # null (dropped) directions: dy = 0
        rhs = (q * r) @ At
        dy, _ = _solve(M, rhs)
        dx = q * (dy @ A - r)
        dz = -z * (dx / x + 1.0)
        dw = -w * (1.0 - dx / s)
        fp = np.minimum(_STEP * _max_step(x, s, dx), 1.0)
        fd = np.minimum(_STEP * np.minimum(_max_step_pos(z, dz), _max_step_pos(w, dw)), 1.0)
        # Mehrotra predictor-corrector
        mu = gap[..., None]
        g = ((z + fd * dz) * (x + fp * dx)).sum(-1, keepdims=True) + (
            (w + fd * dw) * (s - fp * dx)
        ).sum(-1, keepdims=True)
        mu = mu * (g / mu) ** 3 / (2 * n)
        dxdz, dsdw = dx * dz, -dx * dw
        xinv, sinv = 1.0 / x, 1.0 / s
        xi = mu * (xinv - sinv)
        rhs = rhs + (q * (dxdz - dsdw - xi)) @ At
        dy, _ = _solve(M, rhs)
        dx = q * (dy @ A + xi - r - dxdz + dsdw)
        dz = mu * xinv - z - xinv * z * dx - dxdz
        dw = mu * sinv - w + sinv * w * dx - dsdw
        fp = np.minimum(_STEP * _max_step(x, s, dx), 1.0)
        fd = np.minimum(_STEP * np.minimum(_max_step_pos(z, dz), _max_step_pos(w, dw)), 1.0)
        if done.any():
            # finished problems keep their iterate (their Newton system may be singular)
            d = done[..., None]
            x = np.where(d, x, x + fp * dx)
            s = np.where(d, s, s - fp * dx)
            y = np.where(d, y, y + fd * dy)
            z = np.where(d, z, z + fd * dz)
            w = np.where(d, w, w + fd * dw)
        else:
            x, s, y = x + fp * dx, s - fp * dx, y + fd * dy
            z, w = z + fd * dz, w + fd * dw
        gap = (z * x).sum(-1) + (w * s).sum(-1)
    _store(out, gap_out, idx, (x, s, y, z, w), gap)
    return out, gap_out, it


def _store(out: dict, gap_out: np.ndarray, idx: np.ndarray, xsyzw: tuple, gap) -> None:
    for k, v in zip("xsyzw", xsyzw, strict=True):
        out[k][idx] = v
    gap_out[idx] = gap


def _pinball_sum(y: np.ndarray, fit: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Sum over rows of rho_tau(y - fit): y (B,1,n) or (B,Q,n), fit (B,Q,n), tau (Q,)."""
    u = y - fit
    t = tau[:, None]
    return np.maximum(t * u, (t - 1.0) * u).sum(-1)


def _vertex_cleanup(
    U: np.ndarray,
    y: np.ndarray,
    act: np.ndarray,
    gamma: np.ndarray,
    d: np.ndarray,
    tau: np.ndarray,
    rank: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round an interior point to the optimal vertex and certify it.

    U (B,n,k) preconditioned design, y (B,n), act (B,n) rows with weight > 0, gamma (B,Q,k)
    interior-point coefficients, d (B,Q,n) interior-point dual in [tau - 1, tau]. The basis
    is the k active rows whose dual is farthest from its bounds (the rows the optimum
    interpolates). Returns (gamma, objective (B,Q), certified (B,Q)). The vertex replaces
    gamma where it is certified or not worse. Certified means exact LP optimality: the basic
    multipliers xi solving U_h' xi = -sum_{i not in h} psi_i u_i lie in [tau - 1, tau], with
    psi_i = tau or tau - 1 by the residual sign (any value in between, here d_i, where the
    residual is zero), i.e. 0 is a subgradient.
    """
    B, _, k = U.shape
    t = tau[:, None]
    yq = y[:, None, :]
    Ut = U.transpose(0, 2, 1)
    obj = _pinball_sum(yq, gamma @ Ut, tau)
    interior = np.minimum(d - (t - 1.0), t - d)
    interior = np.where(act[:, None, :], interior, -np.inf)  # padding never basic
    h = np.argsort(-interior, axis=-1, kind="stable")[..., :k]  # (B,Q,k)
    rows = np.arange(B)[:, None, None]
    full_rank = (rank == k)[:, None, None, None]
    # a rank-deficient problem's basis is singular: solve the identity there (not used)
    Uh = np.where(full_rank, U[rows, h], np.eye(k))  # (B,Q,k,k)
    yh = y[rows, h]
    sol, solved = _solve(Uh, yh)
    ok = solved & np.isfinite(sol).all(-1) & (rank == k)[:, None]
    sol = np.where(ok[..., None], sol, gamma)
    fit = sol @ Ut
    r = yq - fit
    obj_v = _pinball_sum(yq, fit, tau)
    basic = np.zeros(d.shape, dtype=bool)
    np.put_along_axis(basic, h, True, axis=2)
    zero = np.abs(r) <= 1e-11 * (1.0 + np.abs(yq).max(-1, keepdims=True))
    psi = np.where(zero, np.minimum(np.maximum(d, t - 1.0), t), np.where(r > 0, t, t - 1.0))
    psi = np.where(basic | ~act[:, None, :], 0.0, psi)
    xi, solved2 = _solve(Uh.swapaxes(-1, -2), -(psi @ U))
    slack = 1e-9
    inside = ((xi >= t - 1.0 - slack) & (xi <= t + slack)).all(-1)
    certified = ok & solved2 & inside
    use = certified | (ok & (obj_v <= obj))
    return np.where(use[..., None], sol, gamma), np.where(use, obj_v, obj), certified


def fit_quantile_lp(
    X: np.ndarray,
    y: np.ndarray,
    quantiles: Sequence[float],
    w: np.ndarray | None = None,
    *,
    tol: float = 1e-12,
    max_iter: int = 100,
    chunk: int = 256,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, LPInfo]:
    """Exact batched quantile regression.

    X (B, n, p) including the intercept column, y and w (B, n) (w >= 0, 0 = padding row),
    quantiles (Q,) strictly increasing in (0, 1). Returns coef (B, Q, p) minimising the
    weighted pinball loss for every problem and quantile (the minimum-norm solution in
    rank-deficient directions). `tol` is the stopping duality gap relative to the
    objective; problems are solved `chunk` at a time (256 keeps the working set in cache);
    with `return_info` also returns `LPInfo`.
    """
    qs = check_quantiles(quantiles)
    X, y, w = as_batch(X, y, w)
    B, _, p = X.shape
    Q = len(qs)
    coef = np.empty((B, Q, p))
    objective, gap = np.empty((B, Q)), np.empty((B, Q))
    cert = np.zeros((B, Q), dtype=bool)
    iters = 0
    tau = np.asarray(qs, dtype=np.float64)
    # steps past a boundary divide by ~0 on purpose (clamped right after): no warnings
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for lo in range(0, B, chunk):
            sl = slice(lo, min(lo + chunk, B))
            b, o, g, ce, it = _solve_chunk(
                X[sl] * w[sl, :, None], w[sl] > 0, y[sl] * w[sl], tau, tol, max_iter
            )
            coef[sl], objective[sl], gap[sl], cert[sl] = b, o, g, ce
            iters = max(iters, it)
    if not return_info:
        return coef
    return coef, LPInfo(objective=objective, gap=gap, certified=cert, iterations=iters)


def _solve_chunk(
    Xw: np.ndarray, act: np.ndarray, yw: np.ndarray, tau: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    B, n, p = Xw.shape
    Q = tau.shape[0]
    # scale y so the tolerance is relative; precondition X by its thin SVD
    ymax = np.abs(yw).max(-1)
    ys = np.where(ymax > 0, ymax, 1.0)
    yr = yw / ys[:, None]
    U, S, Vh = np.linalg.svd(Xw, full_matrices=False)  # U (B,n,k), k = min(n,p)
    k = S.shape[-1]
    keep = S[:, :1] * (max(n, p) * 1e-13) < S
    rank = keep.sum(-1)
    U = U * keep[:, None, :] * act[..., None]  # exact zeros on padding rows
    Sinv = np.where(keep, 1.0 / np.maximum(S, 1e-300), 0.0)
    c = np.broadcast_to((-yr)[:, None, :], (B, Q, n))
    A = np.ascontiguousarray(U.transpose(0, 2, 1))
    ysum = 1.0 + np.abs(yr).sum(-1)
    gamma, obj = np.zeros((B, Q, k)), np.zeros((B, Q))
    gap, cert = np.zeros((B, Q)), np.zeros((B, Q), dtype=bool)
    # loosely solved interior points usually already identify the optimal vertex: certify
    # it and stop there; continue the others (warm) to the next level; at `tol` keep the
    # interior point where the vertex cannot be certified (degenerate or rank deficient)
    levels = [lv for lv in LEVELS if lv > tol] + [tol]
    todo, state, iters = np.arange(B), None, 0
    for i, level in enumerate(levels):
        tl = np.broadcast_to((level * ysum[todo])[:, None], (todo.size, Q))
        state, g, it = _frisch_newton(A[todo], c[todo], tau, tl, max_iter, state)
        iters += it
        d = state["x"] - (1.0 - tau[:, None])
        gm, ob, ce = _vertex_cleanup(U[todo], yr[todo], act[todo], -state["y"], d, tau, rank[todo])
        fin = ce.all(-1) if i < len(levels) - 1 else np.ones(ce.shape[0], dtype=bool)
        sel = todo[fin]
        gamma[sel], obj[sel], gap[sel], cert[sel] = gm[fin], ob[fin], g[fin], ce[fin]
        todo, state = todo[~fin], {key: v[~fin] for key, v in state.items()}
        if todo.size == 0:
            break
    # back to the original coordinates: beta = V diag(1/S) gamma, times the y scale
    beta = (gamma * Sinv[:, None, :]) @ Vh * ys[:, None, None]
    scale = ys[:, None]
    return beta, obj * scale, gap * scale, cert, iters
