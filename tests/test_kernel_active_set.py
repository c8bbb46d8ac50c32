"""lqr's active-set dual solver: certified answers are exact optima (KKT), the rest is left to
the interior point, and guesses change the work, not the answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.solvers.kernel_active_set import solve_active_set
from pipeline.models.solvers.quantile_kernel import bound_rows, solve_box_qp


def problems(seed: int, B: int = 12, r: int = 24, pad: int = 3):
    """B kernel QR duals with 3 alphas x 3 quantiles each; the last `pad` rows inactive."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((B, r, 4))
    K = Z @ Z.transpose(0, 2, 1) + np.exp(-0.5 * ((Z[:, :, None] - Z[:, None]) ** 2).sum(-1))
    act = np.ones((B, r), dtype=bool)
    act[:, r - pad :] = False
    m = act.astype(float)
    Km = torch.from_numpy(K * m[:, :, None] * m[:, None, :])
    y = torch.from_numpy((Z[..., 0] + 0.5 * rng.standard_t(4, (B, r))) * m)
    U = torch.from_numpy(m[..., None])
    d = torch.from_numpy(np.where(act, 1e-3, 1.0))
    tau = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64).repeat(3)  # alpha-major
    s = torch.tensor([2.0, 5.0, 20.0], dtype=torch.float64).repeat_interleave(3).expand(B, 9)
    a3 = torch.from_numpy(act)[:, None]
    lo = torch.where(a3, tau[None, :, None] - 1.0, -1.0)
    hi = torch.where(a3, tau[None, :, None], 1.0)
    return Km, d, s, y, U, lo, hi, torch.from_numpy(act)


def interior(Km, d, s, y, U, lo, hi):
    H = Km[:, None] / s[..., None, None] + torch.diag_embed(d)[:, None]
    G = lo.shape[1]
    return solve_box_qp(H, y[:, None].expand(-1, G, -1), U[:, None].expand(-1, G, -1, -1), lo, hi)


@pytest.mark.parametrize("seed", [0, 1])
def test_certified_answers_are_exact_optima(seed: int) -> None:
    Km, d, s, y, U, lo, hi, act = problems(seed)
    v_ipm, nu_ipm = interior(Km, d, s, y, U, lo, hi)
    guess = bound_rows(v_ipm, lo, hi, act)
    v, nu, ok = solve_active_set(Km, d, s, y, U, lo, hi, act, init=guess)
    assert ok.float().mean() > 0.9  # from the optimum's own bounds: one solve
    a3 = act[:, None].expand_as(v)
    H = Km[:, None] / s[..., None, None] + torch.diag_embed(d)[:, None]
    mu = (H * v[..., None, :]).sum(-1) - y[:, None] + U[:, None, :, 0] * nu
    free = a3 & (v > lo) & (v < hi)
    at_lo, at_hi = a3 & (v == lo), a3 & (v == hi)
    for g in torch.nonzero(ok).tolist():
        b, j = g
        assert (v[b, j][a3[b, j]] >= lo[b, j][a3[b, j]]).all()
        assert (v[b, j][a3[b, j]] <= hi[b, j][a3[b, j]]).all()
        assert mu[b, j][free[b, j]].abs().max() < 1e-10  # stationary on the free rows
        assert (mu[b, j][at_lo[b, j]] >= -1e-12).all() and (mu[b, j][at_hi[b, j]] <= 1e-12).all()
        assert abs(float(v[b, j][a3[b, j]].sum())) < 1e-12  # U'v = 0
        assert (v[b, j][~act[b]] == 0).all()  # inactive rows stay pinned
    # the same optimum as the interior point (which is accurate to its stopping tolerance)
    np.testing.assert_allclose(v[ok].numpy(), v_ipm[ok].numpy(), atol=1e-5)
    np.testing.assert_allclose(nu[ok].numpy(), nu_ipm[ok].numpy(), atol=1e-5)


def test_a_guess_changes_the_work_not_the_answer() -> None:
    Km, d, s, y, U, lo, hi, act = problems(2)
    v_ipm, _ = interior(Km, d, s, y, U, lo, hi)
    exact = bound_rows(v_ipm, lo, hi, act)
    # the previous alpha's bounds as a guess for the next one (what lqr's alpha path does)
    shifted = tuple(torch.cat([g[:, :3], g[:, :-3]], 1) for g in exact)
    v1, nu1, ok1 = solve_active_set(Km, d, s, y, U, lo, hi, act, init=exact)
    v2, nu2, ok2 = solve_active_set(Km, d, s, y, U, lo, hi, act, init=shifted, max_iter=30)
    both = ok1 & ok2
    assert both.float().mean() > 0.7
    assert torch.equal(v1[both], v2[both]) and torch.equal(nu1[both], nu2[both])


def test_no_free_row_is_not_certified_off_the_optimum() -> None:
    """Every row on a bound where U'v != 0 (no flat optimum there): left to the interior point."""
    Km, d, s, y, U, lo, hi, act = problems(3)
    none_free = (act[:, None] & (y[:, None] < 0)).expand_as(lo), (act[:, None] & (y[:, None] >= 0))
    _, _, ok = solve_active_set(
        Km, d, s, y, U, lo, hi, act, init=(none_free[0], none_free[1].expand_as(lo)), max_iter=1
    )
    assert not ok.any()


def test_a_flat_intercept_is_the_analytic_centre_of_its_interval() -> None:
    """tau N an integer (20 active rows, tau 0.1 / 0.5 / 0.9): where the optimum has every row
    on a bound, nu is an interval. The certified answer is optimal (the interior point's v,
    its nu inside the same interval) and nu is the interval's analytic centre: the sum of
    1 / (nu - c_i) over the bound rows (the derivative of sum log multipliers) vanishes."""
    Km, d, s, y, U, lo, hi, act = problems(0, B=40, r=24, pad=4)
    v_ipm, nu_ipm = interior(Km, d, s, y, U, lo, hi)
    lower, upper = bound_rows(v_ipm, lo, hi, act)
    flat = ~(act[:, None] & ~lower & ~upper).any(-1)
    assert flat.sum() >= 20  # the case is common here
    v, nu, ok = solve_active_set(Km, d, s, y, U, lo, hi, act, init=(lower, upper))
    sel = ok & flat
    assert sel.float().mean() > 0.9 * flat.float().mean()
    np.testing.assert_allclose(v[sel].numpy(), v_ipm[sel].numpy(), atol=1e-6)
    H = Km[:, None] / s[..., None, None] + torch.diag_embed(d)[:, None]
    c = -((H * v[..., None, :]).sum(-1) - y[:, None])  # multiplier of row i is zero at nu = c_i
    on = lower | upper
    for b, j in torch.nonzero(sel).tolist():
        cl, cu = c[b, j][lower[b, j]], c[b, j][upper[b, j]]
        for n in (nu[b, j, 0], nu_ipm[b, j, 0]):  # both inside the open interval
            assert cl.max() < n < cu.min()
        x = 1.0 / (nu[b, j, 0] - c[b, j][on[b, j]])
        assert abs(float(x.sum())) <= 1e-9 * float(x.abs().sum())


def test_the_interior_point_crossover_keeps_the_optimum() -> None:
    """solve_box_qp hands its problems to a crossover once; what that certifies is the same
    optimum (to the interior point's tolerance), the rest continues unchanged."""
    Km, d, s, y, U, lo, hi, act = problems(4)
    B, G, r = lo.shape
    H = Km[:, None] / s[..., None, None] + torch.diag_embed(d)[:, None]
    args = (H, y[:, None].expand(-1, G, -1), U[:, None].expand(-1, G, -1, -1), lo, hi)
    v_ref, nu_ref = solve_box_qp(*args)
    seen = []

    def crossover(idx, lower, upper):
        bi, gi = idx // G, idx % G
        seen.append(len(idx))
        init = tuple(
            torch.zeros(B, G, r, dtype=torch.bool).index_put_((bi, gi), g) for g in (lower, upper)
        )
        live = torch.zeros(B, G, dtype=torch.bool).index_put_((bi, gi), torch.tensor(True))
        v, nu, ok = solve_active_set(Km, d, s, y, U, lo, hi, act, init=init, live=live)
        return ok[bi, gi], v[bi, gi], nu[bi, gi]

    v_x, nu_x = solve_box_qp(*args, crossover=crossover)
    assert len(seen) == 1 and seen[0] > 0
    assert not torch.equal(v_x, v_ref)  # the crossover answered some (exactly)
    np.testing.assert_allclose(v_x.numpy(), v_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(nu_x.numpy(), nu_ref.numpy(), atol=1e-5)
