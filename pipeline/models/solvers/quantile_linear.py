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

The dual (kernel-form) solver of the penalized model `lqr` lives in
`pipeline.models.solvers.quantile_kernel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.solvers.common import as_batch, chol_solve, torch_single_thread
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


def _max_step(v: torch.Tensor, u: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Largest t with v + t*dv >= 0 and u - t*dv >= 0 (u = upper slack), over the last axis."""
    room = torch.where(dv < 0, v, u) / dv.abs().clamp(min=1e-300)
    return room.amin(dim=-1, keepdim=True).clamp(max=1e20)


def _max_step_pos(v: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Largest t with v + t*dv >= 0 over the last axis (v >= 0 without upper bound)."""
    room = torch.where(dv < 0, v / (-dv).clamp(min=1e-300), 1e20)
    return room.amin(dim=-1, keepdim=True)


def _frisch_newton(
    A: torch.Tensor,
    c: torch.Tensor,
    tau: torch.Tensor,
    tol: torch.Tensor,
    max_iter: int,
    state: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """min c'x s.t. A x = A 1 (1-tau), 0 <= x <= 1, all problems at once.

    A (B, p, n) is shared by the Q quantiles; c (B, Q, n), tau (Q,), tol (B, Q).
    Returns the iterate {x, s, y, z, w} (pass it back as `state` to continue to a tighter
    tolerance; beta = -y), the duality gap (B, Q) and the iteration count.
    """
    B, p, n = A.shape
    Q = tau.shape[0]
    iu, ju = torch.triu_indices(p, p)
    # M = A diag(q) A' for all quantiles as one product with the row outer products
    # (upper triangle only): q (B,Q,n) @ P (B,n,T)
    P = (A[:, iu, :] * A[:, ju, :]).transpose(1, 2).contiguous()
    full = torch.zeros(p, p, dtype=torch.long)
    full[iu, ju] = torch.arange(iu.numel())
    full[ju, iu] = torch.arange(iu.numel())
    full = full.reshape(-1)
    At = A.transpose(1, 2).contiguous()

    if state is None:
        x = (1.0 - tau)[None, :, None].expand(B, Q, n).clone()
        s = 1.0 - x
        y = c @ At  # A has orthonormal (or zero) rows: least-squares start
        r = c - y @ A
        r = r + 0.001 * (r == 0)
        z = r.clamp(min=0.0)
        w = z - r
    else:
        x, s, y, z, w = (state[k] for k in "xsyzw")
    gap = (z * x).sum(-1) + (w * s).sum(-1)
    out = {k: v.clone() for k, v in zip("xsyzw", (x, s, y, z, w), strict=True)}
    gap_out = gap.clone()
    idx = torch.arange(B)
    it = 0
    for it in range(1, max_iter + 1):
        done = gap <= tol
        live = ~done.all(-1)
        if not bool(live.any()):
            it -= 1
            break
        if int(live.sum()) <= 0.5 * live.numel():  # compact: drop finished problems
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
        M.diagonal(dim1=-2, dim2=-1).add_(1e-300)  # null (dropped) directions: dy = 0
        L, _ = torch.linalg.cholesky_ex(M)
        rhs = (q * r) @ At
        dy = chol_solve(L, rhs[..., None])[..., 0]
        dx = q * (dy @ A - r)
        dz = -z * (dx / x + 1.0)
        dw = -w * (1.0 - dx / s)
        fp = (_STEP * _max_step(x, s, dx)).clamp(max=1.0)
        fd = (_STEP * torch.minimum(_max_step_pos(z, dz), _max_step_pos(w, dw))).clamp(max=1.0)
        # Mehrotra predictor-corrector
        mu = gap[..., None]
        g = ((z + fd * dz) * (x + fp * dx)).sum(-1, keepdim=True) + (
            (w + fd * dw) * (s - fp * dx)
        ).sum(-1, keepdim=True)
        mu = mu * (g / mu) ** 3 / (2 * n)
        dxdz, dsdw = dx * dz, -dx * dw
        xinv, sinv = 1.0 / x, 1.0 / s
        xi = mu * (xinv - sinv)
        rhs = rhs + (q * (dxdz - dsdw - xi)) @ At
        dy = chol_solve(L, rhs[..., None])[..., 0]
        dx = q * (dy @ A + xi - r - dxdz + dsdw)
        dz = mu * xinv - z - xinv * z * dx - dxdz
        dw = mu * sinv - w + sinv * w * dx - dsdw
        fp = (_STEP * _max_step(x, s, dx)).clamp(max=1.0)
        fd = (_STEP * torch.minimum(_max_step_pos(z, dz), _max_step_pos(w, dw))).clamp(max=1.0)
        if bool(done.any()):
            # finished problems keep their iterate (their Newton system may be singular)
            d = done[..., None]
            x = torch.where(d, x, x + fp * dx)
            s = torch.where(d, s, s - fp * dx)
            y = torch.where(d, y, y + fd * dy)
            z = torch.where(d, z, z + fd * dz)
            w = torch.where(d, w, w + fd * dw)
        else:
            x, s, y = x + fp * dx, s - fp * dx, y + fd * dy
            z, w = z + fd * dz, w + fd * dw
        gap = (z * x).sum(-1) + (w * s).sum(-1)
    _store(out, gap_out, idx, (x, s, y, z, w), gap)
    return out, gap_out, it


def _store(out: dict, gap_out: torch.Tensor, idx: torch.Tensor, xsyzw: tuple, gap) -> None:
    for k, v in zip("xsyzw", xsyzw, strict=True):
        out[k][idx] = v
    gap_out[idx] = gap


def _pinball_sum(y: torch.Tensor, fit: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Sum over rows of rho_tau(y - fit): y (B,1,n) or (B,Q,n), fit (B,Q,n), tau (Q,)."""
    u = y - fit
    t = tau[:, None]
    return torch.maximum(t * u, (t - 1.0) * u).sum(-1)


def _vertex_cleanup(
    U: torch.Tensor,
    y: torch.Tensor,
    act: torch.Tensor,
    gamma: torch.Tensor,
    d: torch.Tensor,
    tau: torch.Tensor,
    rank: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    B, n, k = U.shape
    Q = tau.shape[0]
    t = tau[:, None]
    yq = y[:, None, :]
    Ut = U.transpose(1, 2)
    obj = _pinball_sum(yq, gamma @ Ut, tau)
    interior = torch.minimum(d - (t - 1.0), t - d)
    interior = torch.where(act[:, None, :], interior, -float("inf"))  # padding never basic
    h = interior.argsort(dim=-1, descending=True)[..., :k]  # (B,Q,k)
    Uh = torch.gather(U[:, None].expand(B, Q, n, k), 2, h[..., None].expand(B, Q, k, k))
    yh = torch.gather(yq.expand(B, Q, n), 2, h)
    sol, info = torch.linalg.solve_ex(Uh, yh)
    ok = (info == 0) & torch.isfinite(sol).all(-1) & (rank == k)[:, None]
    sol = torch.where(ok[..., None], sol, gamma)
    r = yq - sol @ Ut
    obj_v = _pinball_sum(yq, sol @ Ut, tau)
    basic = torch.zeros(B, Q, n, dtype=torch.bool).scatter_(2, h, True)
    zero = r.abs() <= 1e-11 * (1.0 + yq.abs().amax(-1, keepdim=True))
    psi = torch.where(
        zero, torch.minimum(torch.maximum(d, t - 1.0), t), torch.where(r > 0, t, t - 1.0)
    )
    psi = torch.where(basic | ~act[:, None, :], 0.0, psi)
    xi, info2 = torch.linalg.solve_ex(Uh.transpose(-1, -2), -(psi @ U))
    slack = 1e-9
    inside = ((xi >= t - 1.0 - slack) & (xi <= t + slack)).all(-1)
    certified = ok & (info2 == 0) & inside
    use = certified | (ok & (obj_v <= obj))
    return torch.where(use[..., None], sol, gamma), torch.where(use, obj_v, obj), certified


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
    objective; problems are solved `chunk` at a time (256 keeps the working set in cache:
    20% faster than 1024 on this machine); with `return_info`
    also returns `LPInfo`.
    """
    qs = check_quantiles(quantiles)
    X, y, w = as_batch(X, y, w)
    B, _, p = X.shape
    Q = len(qs)
    coef = np.empty((B, Q, p))
    objective, gap = np.empty((B, Q)), np.empty((B, Q))
    cert = np.zeros((B, Q), dtype=bool)
    iters = 0
    with torch.no_grad(), torch_single_thread():
        tau = torch.tensor(qs, dtype=torch.float64)
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
    Xw: np.ndarray, active: np.ndarray, yw: np.ndarray, tau: torch.Tensor, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    Xt, yt, act = torch.from_numpy(Xw), torch.from_numpy(yw), torch.from_numpy(active)
    B, n, p = Xt.shape
    Q = tau.shape[0]
    # scale y so the tolerance is relative; precondition X by its thin SVD
    ymax = yt.abs().amax(-1)
    ys = torch.where(ymax > 0, ymax, torch.ones_like(ymax))
    yr = yt / ys[:, None]
    U, S, Vh = torch.linalg.svd(Xt, full_matrices=False)  # U (B,n,k), k = min(n,p)
    k = S.shape[-1]
    keep = S[:, :1] * (max(n, p) * 1e-13) < S
    rank = keep.sum(-1)
    U = U * keep[:, None, :] * act[..., None]  # exact zeros on padding rows
    Sinv = torch.where(keep, 1.0 / S.clamp(min=1e-300), 0.0)
    c = (-yr)[:, None, :].expand(-1, Q, -1)
    A = U.transpose(1, 2).contiguous()
    ysum = 1.0 + yr.abs().sum(-1)
    gamma, obj = torch.zeros(B, Q, k, dtype=Xt.dtype), torch.zeros(B, Q, dtype=Xt.dtype)
    gap, cert = torch.zeros(B, Q, dtype=Xt.dtype), torch.zeros(B, Q, dtype=torch.bool)
    # loosely solved interior points usually already identify the optimal vertex: certify
    # it and stop there; continue the others (warm) to the next level; at `tol` keep the
    # interior point where the vertex cannot be certified (degenerate or rank deficient)
    levels = [lv for lv in LEVELS if lv > tol] + [tol]
    todo, state, iters = torch.arange(B), None, 0
    for i, level in enumerate(levels):
        tl = (level * ysum[todo])[:, None].expand(-1, Q)
        state, g, it = _frisch_newton(A[todo], c[todo], tau, tl, max_iter, state)
        iters += it
        d = state["x"] - (1.0 - tau[:, None])
        gm, ob, ce = _vertex_cleanup(U[todo], yr[todo], act[todo], -state["y"], d, tau, rank[todo])
        fin = ce.all(-1) if i < len(levels) - 1 else torch.ones_like(ce[:, 0])
        sel = todo[fin]
        gamma[sel], obj[sel], gap[sel], cert[sel] = gm[fin], ob[fin], g[fin], ce[fin]
        todo, state = todo[~fin], {key: v[~fin] for key, v in state.items()}
        if todo.numel() == 0:
            break
    # back to the original coordinates: beta = V diag(1/S) gamma, times the y scale
    beta = (gamma * Sinv[:, None, :]) @ Vh * ys[:, None, None]
    scale = ys[:, None]
    return beta.numpy(), (obj * scale).numpy(), (gap * scale).numpy(), cert.numpy(), iters
