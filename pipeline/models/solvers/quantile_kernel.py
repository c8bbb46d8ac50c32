"""Batched dual (kernel-form) solver of penalized linear quantile regression (`lqr`).

The primal problem, per problem, alpha and quantile tau,

    min_{beta, gamma}  (1/N) sum_i w_i rho_tau(y_i - U_i gamma - phi_i' beta) + lam ||beta||^2,

has n-dimensional dual (representer theorem: beta = phi' c, so only K = phi phi' enters)

    max_v  y'v - v'Kv / (4 lam N) - (eps/2) sum_i v_i^2 / w_i
    s.t.   U'v = 0,  w_i (tau - 1) <= v_i <= w_i tau,

with c = v / (2 lam N) and gamma the multipliers of U'v = 0. eps = 0 is the exact check
loss; eps > 0 smooths it by its Moreau envelope (a Huber-type loss) and makes the dual
strongly convex. `solve_kernel_qr` builds this box-constrained QP for all problems, alphas
and quantiles at once. Alphas are solved in order, each by the active-set method of
`pipeline.models.solvers.kernel_active_set` started from the previous alpha's optimum (its
rows on their bounds: a few swaps away), which ends in the exact optimum of one small linear
system; the first alpha (unless the caller passes a guess, as lqr's refit does) and the few
whose swaps do not settle go to `solve_box_qp`, a batched Mehrotra primal-dual interior
point (one Cholesky factorization per problem and iteration, shared by the predictor and the
corrector step), which after CROSSOVER_ITER iterations hands its problems to the active-set
method with the bounds its iterate predicts (most certify at once: a third fewer interior
point iterations).

Imports: torch and solvers/ (common, kernel_active_set).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pipeline.models.solvers.common import chol_solve
from pipeline.models.solvers.kernel_active_set import MAX_ITER, solve_active_set

INIT_MARGIN = 1.0  # box-QP start: multiplier margin, relative to the mean |gradient|
START_ITER = 10  # active-set iterations from `start` (a rougher guess than the last alpha's)
CROSSOVER_ITER = 6  # interior-point iterations before the crossover to the active-set method
CROSSOVER_AS_ITER = 2  # its active-set iterations (from the interior point's near guess)
ALIGN = 8  # Newton systems padded to a multiple of 8 rows: 64-byte aligned float64 matrices


def _qp_newton(kkt: tuple, rl: torch.Tensor, ru: torch.Tensor, Minv_g=None) -> tuple:
    """Newton direction of the box-QP KKT system for complementarity targets rl, ru."""
    L, Ut, UMU, Minv_U, rd, rp, sl, su, zl, zu = kkt
    k = Ut.shape[-2]
    g = -rd + rl / sl - ru / su
    if Minv_g is None:
        Minv_g = chol_solve(L, g[..., None])[..., 0]
    if k == 0:
        dv, dnu = Minv_g, torch.zeros(*rd.shape[:-1], 0, dtype=rd.dtype)
    else:
        rhs = (Ut * Minv_g[..., None, :]).sum(-1) + rp  # k is 1 or 2: no tiny GEMMs
        # k == 1 (intercept only, the usual case): a division instead of a LAPACK call
        dnu = rhs / UMU[..., 0] if k == 1 else torch.linalg.solve(UMU, rhs[..., None])[..., 0]
        dv = Minv_g - (Minv_U * dnu[..., None, :]).sum(-1)
    return dv, dnu, (rl - zl * dv) / sl, (ru + zu * dv) / su


def _qp_step(sl, su, zl, zu, dv, dzl, dzu) -> torch.Tensor:
    """Largest t keeping v inside the box and the multipliers nonnegative."""
    big = torch.full_like(dv, 1e20)
    t = torch.where(dv < 0, sl, su) / dv.abs().clamp(min=1e-300)
    t = torch.minimum(t, torch.where(dzl < 0, zl / (-dzl).clamp(min=1e-300), big))
    t = torch.minimum(t, torch.where(dzu < 0, zu / (-dzu).clamp(min=1e-300), big))
    return t.amin(-1, keepdim=True)


def solve_box_qp(
    H: torch.Tensor,
    y: torch.Tensor,
    U: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    tol: float = 1e-12,
    max_iter: int = 60,
    crossover: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched primal-dual interior point (Mehrotra) for the kernel-form dual QP

        min_v  1/2 v'Hv - y'v   s.t.  U'v = 0,  lo <= v <= hi.

    y/lo/hi (..., n), U (..., n, k), H (..., n, n) symmetric positive semi-definite; H and U
    may broadcast over the batch axes (e.g. one H shared by all quantiles) and are not
    copied per problem. Returns v (..., n) and the equality multipliers nu (..., k) (the
    unpenalized coefficients). Every problem needs lo < hi; pin a row to 0 with a unit
    diagonal and wide bounds. Finished problems are dropped from the batch as they
    converge (most finish within a couple of iterations of each other, a few lag).

    `crossover(idx, lower, upper)`, if given, is called once, after CROSSOVER_ITER iterations,
    with the flat indices of the unfinished problems and the rows the iterate predicts on
    their lower / upper bound (multiplier above slack); it returns (certified, v, nu) for
    them, and the certified leave the interior point (an exact solution from a near-exact
    guess: the active-set method's one solve, instead of the iterations left here).
    """
    batch, n, k = y.shape[:-1], y.shape[-1], U.shape[-1]
    Hf = H.reshape(-1, n, n)
    hidx = torch.arange(Hf.shape[0]).reshape(H.shape[:-2]).expand(batch).flatten()
    Uf = U.expand(*batch, n, k).reshape(-1, n, k)
    y, lo, hi = (a.reshape(-1, n) for a in (y, lo, hi))
    N = y.shape[0]
    v = 0.5 * (lo + hi)
    nu = torch.zeros(N, k, dtype=y.dtype)
    scale = 1.0 + y.abs().amax(-1, keepdim=True)
    eye_k = torch.eye(k, dtype=y.dtype)
    # dual-feasible start: zl - zu equals the gradient at v, plus a common margin
    # H v as a product and a row sum, not a batched GEMV: BLAS picks a GEMV kernel by batch
    # size, this gives each problem the same bits in any batch (one key, one result)
    g0 = (Hf[hidx] * v[:, None, :]).sum(-1) - y
    margin = INIT_MARGIN * (1.0 + g0.abs().mean(-1, keepdim=True))
    zl, zu = g0.clamp(min=0.0) + margin, (-g0).clamp(min=0.0) + margin
    v_out, nu_out = v.clone(), nu.clone()
    idx = torch.arange(N)

    for it in range(max_iter):
        Hc = Hf[hidx]  # this iteration's copy, turned into the Newton matrix below
        sl, su = v - lo, hi - v
        rd = (Hc * v[:, None, :]).sum(-1) - y + (Uf * nu[:, None, :]).sum(-1) - zl + zu
        rp = (v[..., None] * Uf).sum(-2)
        gap = (sl * zl).sum(-1, keepdim=True) + (su * zu).sum(-1, keepdim=True)
        res = rd.abs().amax(-1, keepdim=True)
        if k:
            res = torch.maximum(res, rp.abs().amax(-1, keepdim=True))
        done = ((gap <= tol * scale * n) & (res <= tol * scale))[:, 0]
        if crossover is not None and it == CROSSOVER_ITER:
            ok, v_x, nu_x = crossover(idx, zl > sl, zu > su)
            ok &= ~done
            v, nu = torch.where(ok[:, None], v_x, v), torch.where(ok[:, None], nu_x, nu)
            done |= ok
        if bool(done.any()):
            v_out[idx[done]], nu_out[idx[done]] = v[done], nu[done]
            keep = ~done
            if not bool(keep.any()):
                break
            idx, hidx, Uf, y, lo, hi, scale = (a[keep] for a in (idx, hidx, Uf, y, lo, hi, scale))
            v, nu, zl, zu, sl, su, rd, rp, gap, Hc = (
                a[keep] for a in (v, nu, zl, zu, sl, su, rd, rp, gap, Hc)
            )
        Ut = Uf.transpose(-1, -2)
        Hc.diagonal(dim1=-2, dim2=-1).add_(zl / sl + zu / su)
        L, _ = torch.linalg.cholesky_ex(Hc)
        # predictor (affine scaling); one triangular solve for U and the right-hand side
        sol = chol_solve(L, torch.cat([Uf, (-rd - zl + zu)[..., None]], -1))
        Minv_U = sol[..., :k]
        UMU = (Uf[..., :, None] * Minv_U[..., None, :]).sum(-3) + 1e-14 * eye_k

        kkt = (L, Ut, UMU, Minv_U, rd, rp, sl, su, zl, zu)
        dv, dnu, dzl, dzu = _qp_newton(kkt, -sl * zl, -su * zu, Minv_g=sol[..., k])
        t = _qp_step(sl, su, zl, zu, dv, dzl, dzu).clamp(max=1.0)
        gap_aff = ((sl + t * dv) * (zl + t * dzl)).sum(-1, keepdim=True) + (
            (su - t * dv) * (zu + t * dzu)
        ).sum(-1, keepdim=True)
        mu = (gap_aff / gap) ** 3 * gap / (2 * n)
        # corrector with the second-order terms of the affine step
        dv, dnu, dzl, dzu = _qp_newton(kkt, mu - sl * zl - dv * dzl, mu - su * zu + dv * dzu)
        t = (0.995 * _qp_step(sl, su, zl, zu, dv, dzl, dzu)).clamp(max=1.0)
        v, nu = v + t * dv, nu + t * dnu
        zl, zu = zl + t * dzl, zu + t * dzu
    else:
        v_out[idx], nu_out[idx] = v, nu  # max_iter reached: return the last iterate
    return v_out.reshape(*batch, n), nu_out.reshape(*batch, k)


def solve_kernel_qr(
    K: torch.Tensor,
    U: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    tau: torch.Tensor,
    lam: torch.Tensor,
    eps: float,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penalized QR in kernel form (objective in `pipeline.models.solvers.lqr`).

    K (B,n,n) = phi phi' over the penalized features, U (B,n,k) unpenalized columns, y/w
    (B,n) (w = 0: row not in this fit), tau (Q,), lam (B,A,1) or (B,1,Q), eps the Huber
    (Moreau) smoothing (0 = exact check loss). Returns c (B,A,Q,n) and gamma (B,A,Q,k)
    with fitted values f = K c + U gamma. `start`: optional guesses (lower, upper) (B,1,Q,n)
    of the rows whose dual sits on its lower / upper bound at the first alpha's optimum
    (rows below / above their quantile fit); without one, the first alpha is solved by the
    interior point. Guesses only change the work, not the optimum.
    """
    # one solve per padded size (active rows rounded up to ALIGN): a problem's arithmetic (its
    # systems' size, its pinned rows, the interior point's centering) then depends on its own
    # rows only, never on its batch mates; late-starting countries' windows (a different row
    # count at every origin) share a solve with their neighbours of the same size
    size = ((w > 0).sum(-1) + ALIGN - 1).div(ALIGN, rounding_mode="floor").clamp(min=1)
    if bool((size == size[0]).all()):
        return _solve_equal_rows(K, U, y, w, tau, lam, eps, start)
    B, n = w.shape
    A = max(lam.shape[1], 1)
    c = torch.zeros(B, A, tau.shape[0], n, dtype=K.dtype)
    nu = torch.zeros(B, A, tau.shape[0], U.shape[-1], dtype=K.dtype)
    for r in torch.unique(size).tolist():
        sel = torch.nonzero(size == r)[:, 0]
        part = None if start is None else tuple(g[sel] for g in start)
        c[sel], nu[sel] = _solve_equal_rows(
            K[sel], U[sel], y[sel], w[sel], tau, lam[sel], eps, part
        )
    return c, nu


def _solve_equal_rows(
    K: torch.Tensor,
    U: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    tau: torch.Tensor,
    lam: torch.Tensor,
    eps: float,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`solve_kernel_qr` for problems whose active rows pad to the same size.

    The Newton systems are (rows in the fit)^2, not n^2 (validation fits use n - 12 rows),
    padded to a multiple of ALIGN rows (pinned to v = 0): MKL's triangular solves give bits
    that depend on a matrix's memory alignment, so every problem's matrices must start on a
    64-byte boundary wherever it sits in the batch (one key, one result).
    """
    B, n0 = w.shape
    r = ALIGN * max(1, math.ceil(int((w > 0).sum(-1).max()) / ALIGN))
    if r > n0:  # room for the padding rows
        pad = r - n0
        if start is not None:
            start = tuple(torch.nn.functional.pad(g, (0, pad)) for g in start)
        K = torch.nn.functional.pad(K, (0, pad, 0, pad))
        U = torch.nn.functional.pad(U, (0, 0, 0, pad))
        y, w = torch.nn.functional.pad(y, (0, pad)), torch.nn.functional.pad(w, (0, pad))
    n = w.shape[1]
    act = w > 0
    # each problem's active rows first, then (inactive) padding rows
    order = torch.argsort((~act).to(torch.int8), dim=-1, stable=True)[:, :r]
    K = torch.gather(
        torch.gather(K, 1, order[..., None].expand(B, r, n)), 2, order[:, None, :].expand(B, r, r)
    )
    U = torch.gather(U, 1, order[..., None].expand(B, r, U.shape[-1]))
    y, w, act = (torch.gather(a, 1, order) for a in (y, w, act))
    N = w.sum(-1).clamp(min=1.0)
    m = act.to(K.dtype)
    Km = K * m[:, :, None] * m[:, None, :]
    shape = (B, max(lam.shape[1], 1), tau.shape[0], r)
    scale = (2.0 * lam * N[:, None, None]).expand(shape[:3])  # (B,A,Q)
    diag = torch.where(act, eps / w.clamp(min=1e-300), 1.0)  # padding rows pinned to v = 0
    t = tau[None, None, :, None]
    wq = w[:, None, None, :]
    lo = torch.where(act[:, None, None, :], wq * (t - 1.0), -1.0).expand(shape)
    hi = torch.where(act[:, None, None, :], wq * t, 1.0).expand(shape)
    Um, ym = U * m[..., None], y * m

    def interior_point(bi: torch.Tensor, ai: torch.Tensor, qi: torch.Tensor) -> tuple:
        # the QPs (problem bi[j], alpha ai[j], quantile qi[j]) by the interior point, with a
        # crossover to the active-set method once it is near (all of one alpha, ai[0])
        H = Km[bi] / scale[bi, ai, qi][:, None, None] + torch.diag_embed(diag[bi])
        a = int(ai[0])

        def crossover(j: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> tuple:
            # the problems' QPs as (problem, quantile), the arithmetic of the alpha path
            pb, inv = torch.unique(bi[j], return_inverse=True)
            live = torch.zeros(pb.shape[0], shape[2], dtype=torch.bool)
            live[inv, qi[j]] = True
            guess = [torch.zeros(pb.shape[0], shape[2], r, dtype=torch.bool) for _ in "lu"]
            guess[0][inv, qi[j]], guess[1][inv, qi[j]] = lower, upper
            vx, nux, ok = solve_active_set(
                Km[pb], diag[pb], scale[pb, a], ym[pb], Um[pb], lo[pb, a], hi[pb, a], act[pb],
                init=tuple(guess), max_iter=CROSSOVER_AS_ITER, live=live,
            )  # fmt: skip
            return ok[inv, qi[j]], vx[inv, qi[j]], nux[inv, qi[j]]

        return solve_box_qp(H, ym[bi], Um[bi], lo[bi, ai, qi], hi[bi, ai, qi], crossover=crossover)

    # each alpha by the active-set method, started from the previous alpha's bounds (a
    # nearby optimum) or from `start`; the first (without a start) and the uncertified by the
    # interior point
    v = torch.zeros(shape, dtype=K.dtype)
    nu = torch.zeros(*shape[:3], U.shape[-1], dtype=K.dtype)
    for a in range(shape[1]):
        if a == 0 and start is None:
            done = torch.zeros(shape[0], shape[2], dtype=torch.bool)
        else:
            if a == 0:
                guess = [torch.gather(g[:, 0], -1, order[:, None].expand(shape[0], shape[2], r))
                         for g in start]  # fmt: skip
            else:
                guess = bound_rows(v[:, a - 1], lo[:, a - 1], hi[:, a - 1], act)
            v[:, a], nu[:, a], done = solve_active_set(
                Km, diag, scale[:, a], ym, Um, lo[:, a], hi[:, a], act, init=guess,
                max_iter=START_ITER if a == 0 else MAX_ITER,
            )  # fmt: skip
        if not bool(done.all()):
            bi, qi = torch.nonzero(~done, as_tuple=True)
            v[bi, a, qi], nu[bi, a, qi] = interior_point(bi, torch.full_like(bi, a), qi)
    c_act = v * m[:, None, None, :] / scale[..., None]
    c = torch.zeros(*shape[:3], n, dtype=K.dtype)
    c.scatter_(-1, order[:, None, None, :].expand(shape), c_act)
    return c[..., :n0], nu


def bound_rows(
    v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, act: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a solution v (B, G, r) at their lower and upper bounds (within 1e-6 of the
    box width: the interior point's iterate sits that close), active rows only."""
    width = (hi - lo) * 1e-6
    a3 = act[:, None, :]
    return a3 & (v - lo <= width), a3 & (hi - v <= width)


def kernel_pinball(
    y: torch.Tensor, f: torch.Tensor, tau: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Weighted mean pinball over the last axis; y/f/w broadcast, tau (Q,) on axis -2."""
    u = y - f
    t = tau[:, None]
    return (torch.maximum(t * u, (t - 1.0) * u) * w).sum(-1) / w.sum(-1).clamp(min=1e-300)
