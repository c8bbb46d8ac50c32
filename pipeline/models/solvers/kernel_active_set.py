"""Batched primal-dual active-set solver of the kernel-form dual QP of `lqr`.

The dual of one (problem, alpha, quantile) is the box QP

    min_v  1/2 v'Hv - y'v   s.t.  U'v = 0,  lo <= v <= hi,   H = Km / s + diag(d),

(`pipeline.models.solvers.quantile_kernel` has the derivation). At the optimum almost every v_i
sits on a bound (a row strictly above or below its quantile fit); only a few rows are free
(2-13 of 40-64 on real HICP windows), so the optimum is the solution of one small linear
system once the bounds are known. The primal-dual active-set method (a semismooth Newton
method: Hintermueller, Ito & Kunisch, 2002) guesses the bound rows, solves the KKT system of
the free rows and the multipliers nu exactly, and re-guesses from the signs of the bound
rows' multipliers; when the guess repeats, the point satisfies the optimality conditions
exactly (up to rounding): it is *certified*. A handful of iterations replaces the interior
point's ~14 Cholesky factorizations of the full system per problem.

With one unpenalized column (the intercept) and every row on a bound (tau N an integer, as
for the median of an even count), nu is not unique but an interval: the answer is then its
analytic centre, the point where the interior point's central path ends (`_flat_intercept`).
Problems that are not certified (a singular free block, a free row on its bound, or guesses
that cycle) are left to the interior point (`solve_box_qp`).

One key, one result: the free-row systems are solved by an elimination written as
elementwise operations over a batch padded to its largest free set (padding rows are
identity rows: they add exact zeros to the real rows), and H v is one product per problem
with its own K, so a problem's bits never depend on its batch-mates.

Imports: torch only.
"""

from __future__ import annotations

import torch

MAX_ITER = 6  # iterations before a problem is handed to the interior point
MARGIN = 1e-9  # a free row this close to a bound (relative to the box width) is on it
PIVOT_TOL = 1e-10  # relative pivot below which the free-row system counts as singular
FLAT_NEWTON = 8  # Newton steps for a flat intercept (1e-14 after 6 on the tests' problems)


def _ldl_solve(M: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve symmetric M x = b (N, m, m) by elimination without pivoting; returns x and the
    pivots (N, m). Elementwise operations only (no reductions, no fused multiply-adds), so a
    row's bits do not depend on the padding that follows it."""
    M, b = M.clone(), b.clone()
    m = M.shape[-1]
    for j in range(m - 1):
        lj = M[:, j + 1 :, j] / M[:, j, None, j]
        M[:, j + 1 :, j + 1 :] -= lj[:, :, None] * M[:, j, None, j + 1 :]
        b[:, j + 1 :] -= lj * b[:, j, None]
    piv = M.diagonal(dim1=-2, dim2=-1).clone()
    for j in range(m - 1, -1, -1):
        b[:, j] = b[:, j] / piv[:, j]
        if j:
            b[:, :j] -= M[:, :j, j] * b[:, j, None]
    return b, piv


def solve_active_set(
    Km: torch.Tensor,
    d: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    U: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    act: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = MAX_ITER,
    live: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve G box QPs per problem, H_g = Km / s_g + diag(d), sharing the problem's y, U, Km.

    Km (B, r, r) symmetric PSD (zero on inactive rows), d (B, r), s (B, G) positive, y (B, r),
    U (B, r, k), lo/hi (B, G, r) with lo < hi on active rows, act (B, r) (inactive rows are
    fixed at v = 0). Returns v (B, G, r), nu (B, G, k) and certified (B, G): where False, v and
    nu are not the optimum and the caller must solve that QP otherwise. `live` (B, G): the QPs
    to solve (default all; the others come back uncertified).
    """
    B, G, r = lo.shape
    k = U.shape[-1]
    a3 = act[:, None, :].expand(B, G, r)
    hdiag = Km.diagonal(dim1=-2, dim2=-1)[:, None, :] / s[..., None] + d[:, None, :]
    hdiag = torch.where(a3, hdiag, 1.0)
    if init is None:  # v = 0, nu = 0 (the fit is the standardized target's mean)
        t = y[:, None, :] / hdiag
        lower, upper = a3 & (t < lo), a3 & (t > hi)
    else:
        lower, upper = a3 & init[0], a3 & init[1]
    v = torch.zeros(B, G, r, dtype=Km.dtype)
    nu = torch.zeros(B, G, k, dtype=Km.dtype)
    live = torch.ones(B, G, dtype=torch.bool) if live is None else live.clone()
    certified = torch.zeros(B, G, dtype=torch.bool)
    data = (Km, d, s, y, U, lo, hi, a3, hdiag)
    for _ in range(max_iter):
        # only the problems with a live QP (the last iterations are a few stragglers')
        pb = torch.nonzero(live.any(-1))[:, 0]
        if pb.shape[0] == B:
            sub = slice(None)
            out = _iteration(data, lower, upper, v, nu, live)
        else:
            sub = pb
            out = _iteration(
                tuple(a[pb] for a in data), lower[pb], upper[pb], v[pb], nu[pb], live[pb]
            )
        lower[sub], upper[sub], v[sub], nu[sub], live[sub], done = out
        certified[sub] |= done
        if not bool(live.any()):
            break
    return v, nu, certified


def _free_solve(
    data: tuple[torch.Tensor, ...], lower: torch.Tensor, upper: torch.Tensor, live: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The KKT solution of the live QPs' free rows (bound rows at their bounds) and nu.

    Returns the live QPs' indices (bi, gi), their free rows (L, r), the solution vl (L, r),
    nu (L, k), `good` (L,): a regular free block with k or more free rows, none of them on a
    bound (to rounding), and H v_B - y (L, r). Each problem's arithmetic is its own (see `_ldl_solve`)."""
    Km, d, s, _, U, lo, hi, a3, hdiag = data
    k, dt = U.shape[-1], Km.dtype
    free = a3 & ~lower & ~upper
    vb = torch.where(lower, lo, torch.where(upper, hi, 0.0))
    g_b = _grad(data, vb, torch.zeros(*lo.shape[:2], k, dtype=dt))  # H v_B - y
    ub = (U[:, None] * vb[..., None]).sum(-2)  # U' v_B (B, G, k)
    # the live QPs' free-row KKT systems, padded to the largest free set
    bi, gi = torch.nonzero(live, as_tuple=True)
    rows = torch.arange(len(bi))[:, None]
    fr = free[bi, gi]  # (L, r)
    cnt = fr.sum(-1)
    f = int(cnt.max()) if cnt.numel() else 0
    idx = torch.argsort((~fr).to(torch.int8), dim=-1, stable=True)[:, :f]  # free rows first
    ok = torch.arange(f)[None, :] < cnt[:, None]  # (L, f) real (not padding) entries
    M = torch.zeros(bi.shape[0], f + k, f + k, dtype=dt)
    Kff = Km[bi[:, None, None], idx[:, :, None], idx[:, None, :]] / s[bi, gi][:, None, None]
    M[:, :f, :f] = torch.where(ok[:, :, None] & ok[:, None, :], Kff, 0.0)
    dff = torch.where(ok, d[bi[:, None], idx], 1.0)  # padding: identity rows
    M[:, :f, :f] += torch.where(torch.eye(f, dtype=torch.bool), dff[:, :, None], 0.0)
    Uf = torch.where(ok[..., None], U[bi[:, None], idx], 0.0)  # (L, f, k)
    M[:, :f, f:] = Uf
    M[:, f:, :f] = Uf.transpose(1, 2)
    rhs = torch.cat([torch.where(ok, -g_b[bi, gi][rows, idx], 0.0), -ub[bi, gi]], -1)
    x, piv = _ldl_solve(M, rhs)
    # singular free block (or no free row: nu not unique): not certifiable here
    # (sums over all r rows, not the padded free rows: bits independent of the padding)
    hf = torch.where(ok, hdiag[bi, gi][rows, idx], 1.0)
    hmax = torch.where(fr, hdiag[bi, gi], 0.0).amax(-1, keepdim=True).clamp(min=1e-300)
    ref = ((U[bi] * U[bi]) * fr[..., None]).sum(-2) / hmax  # the scale of U_F' H_FF^-1 U_F
    good = (piv[:, :f] > PIVOT_TOL * hf).all(-1) & (-piv[:, f:] > PIVOT_TOL * ref).all(-1)
    good &= torch.isfinite(x).all(-1) & (cnt >= k)
    vl = vb[bi, gi].scatter_add(-1, idx, torch.where(ok, x[:, :f], 0.0))
    # a free row on its bound (to rounding) is degenerate: then nu is an interval (tau N an
    # integer, as for the median of an even count), whose centre the interior point gives
    lol, hil = lo[bi, gi], hi[bi, gi]
    edge = torch.minimum(vl - lol, hil - vl).abs() <= MARGIN * (hil - lol)
    good &= ~(fr & edge).any(-1)
    return bi, gi, fr, vl, x[:, f:], good, g_b[bi, gi]


def _grad(data: tuple[torch.Tensor, ...], v: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """H v - y + U nu (B, G, r); v @ Km is one GEMM per problem of a fixed shape (G, r) x (r, r)."""
    Km, d, s, y, U = data[:5]
    hv = torch.matmul(v, Km) / s[..., None] + d[:, None, :] * v
    return hv - y[:, None, :] + (U[:, None] * nu[:, :, None, :]).sum(-1)


def _iteration(
    data: tuple[torch.Tensor, ...],
    lower: torch.Tensor,
    upper: torch.Tensor,
    v: torch.Tensor,
    nu: torch.Tensor,
    live: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One active-set iteration of the live QPs of some problems (each problem's arithmetic
    is its own): solve the free rows' KKT system, then move the most violated row.
    Returns the new lower, upper, v, nu, live and the QPs certified now."""
    lo, hi, a3, hdiag = data[5:]
    k = data[4].shape[-1]
    v, nu = v.clone(), nu.clone()
    free = a3 & ~lower & ~upper
    bi, gi, fr, vl, nul, good, g_b = _free_solve(data, lower, upper, live)
    nob = ~fr.any(-1)
    if k == 1 and bool(nob.any()):
        # every row on a bound: nu is an interval (tau N an integer), take its centre
        j = torch.nonzero(nob)[:, 0]
        flat, nu_flat = _flat_intercept(
            data[4][bi[j]], lower[bi[j], gi[j]], upper[bi[j], gi[j]], vl[j], g_b[j]
        )
        good[j] |= flat
        nul[j] = torch.where(flat[:, None], nu_flat, nul[j])
    v[bi, gi] = torch.where(good[:, None], vl, v[bi, gi])
    nu[bi, gi] = torch.where(good[:, None], nul, nu[bi, gi])
    # new guess: the coordinate-wise Newton step of each bound row, v - mu / H_ii
    t = torch.where(free, v, v - _grad(data, v, nu) / hdiag)
    new_lower, new_upper = a3 & (t < lo), a3 & (t > hi)
    # one change per iteration, the most violated row: swapping every violated row at once
    # (plain PDAS) cycles here, since nu moves every bound row's multiplier at once; and
    # never the last free row to a bound (nu needs k free rows), unless it is the only
    # change and k = 1 (then every row is on a bound: the interval case above)
    changed = (new_lower != lower) | (new_upper != upper)
    eligible = changed & ~(free & (free.sum(-1, keepdim=True) <= k))
    if k == 1:
        eligible = torch.where(eligible.any(-1, keepdim=True), eligible, changed)
    viol = torch.where(free, torch.maximum(lo - v, v - hi), (t - v).abs())
    pick = torch.where(eligible, viol, -1.0).argmax(-1, keepdim=True)
    one = torch.zeros_like(changed).scatter_(-1, pick, True) & eligible
    same = ~changed.any(-1)
    fail = changed.any(-1) & ~eligible.any(-1)  # stuck: only the last free row moves
    fail[bi, gi] |= ~good
    done = live & same & ~fail
    live = live & ~same & ~fail
    lower = torch.where(live[..., None] & one, new_lower, lower)
    upper = torch.where(live[..., None] & one, new_upper, upper)
    return lower, upper, v, nu, live, done


def _flat_intercept(
    U: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, v: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimum of QPs (L,) with every active row on a bound and one unpenalized column
    U (L, r, 1) (the intercept), at v (L, r) with H v - y = g: U'v = 0 must hold (to rounding)
    and the bound rows' multipliers z_i = +-(g_i + u_i nu) stay positive for nu in an open
    interval. Returns (ok (L,), nu (L, 1)) with nu the interval's analytic centre (the
    maximizer of sum log z_i, where the interior point's central path ends), by safeguarded
    Newton steps on its monotone derivative."""
    u = U[..., 0]
    pos = u > 0
    c = -g / torch.where(pos, u, 1.0)  # z_i = 0 at nu = c_i
    inf = torch.full_like(c, torch.inf)
    a, b = torch.where(lower, c, -inf).amax(-1), torch.where(upper, c, inf).amin(-1)
    uv = (u * v).sum(-1).abs()
    ok = (uv <= 1e-12 * (u * v).abs().sum(-1)) & (a < b) & torch.isfinite(a) & torch.isfinite(b)
    ok &= ~((lower | upper) & ~pos).any(-1)
    bound = lower | upper
    nu = torch.where(ok, 0.5 * (a + b), 0.0)
    lo_b, hi_b = torch.where(ok, a, -1.0), torch.where(ok, b, 1.0)
    for _ in range(FLAT_NEWTON):
        # d/dnu sum log z = sum 1 / (nu - c_i) over the bound rows (decreasing in nu), times
        # (nu - a)(b - nu): the same root without the poles at the ends, for Newton's steps
        r = torch.where(bound, 1.0 / torch.where(bound, nu[:, None] - c, 1.0), 0.0)
        d1, d2 = r.sum(-1), -(r * r).sum(-1)
        lo_b = torch.where(d1 > 0, nu, lo_b)
        hi_b = torch.where(d1 < 0, nu, hi_b)
        p = (nu - a) * (b - nu)
        step = nu - p * d1 / ((a + b - 2.0 * nu) * d1 + p * d2)
        nu = torch.where((step >= lo_b) & (step <= hi_b), step, 0.5 * (lo_b + hi_b))
    return ok, nu[:, None]
