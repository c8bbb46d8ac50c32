"""One training step of ensemble_nn's stacked members, written by hand (no autograd).

Every member's parameters are one row of a flat (A, P) buffer; the layers are views into
it, so the gradient is one (A, P) buffer too and a single fused Adam call updates the whole
batch. Forward and backward are batched matrix products over the member axis: a member's
numbers never mix with another member's. `grad_check` in tests/test_ensemble_nn.py holds
`loss_and_grad` to autograd on `_batched_mlp.forward` / `member_loss` in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Layout:
    """Where each parameter lives in a member's flat row.

    Order (as `init_member` and the saved state): W_0..W_L (in, out), b_0..b_L (1, out),
    AR (2, C, H) stored as (2C, H) so that design (n, 2C) @ AR gives a_c + phi_c * y_t.
    """

    sizes: tuple[int, ...]  # p, units..., H*Q
    n_countries: int
    H: int
    Q: int

    @property
    def shapes(self) -> list[tuple[int, int]]:
        pairs = list(zip(self.sizes[:-1], self.sizes[1:], strict=True))
        return [*pairs, *[(1, b) for _, b in pairs], (2 * self.n_countries, self.H)]

    @property
    def width(self) -> int:
        return sum(a * b for a, b in self.shapes)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(A, rows, cols) views of a (A, P) buffer, in parameter order."""
        out, at = [], 0
        for a, b in self.shapes:
            out.append(flat[:, at : at + a * b].unflatten(1, (a, b)))
            at += a * b
        return out

    def pack(self, params: list[torch.Tensor]) -> torch.Tensor:
        """(A, P) from per-parameter stacks (A, ...) in parameter order."""
        return torch.cat([p.flatten(1) for p in params], dim=1)

    def unpack(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter stacks in the saved layout (the AR table back to (A, 2, C, H))."""
        views = self.views(flat)
        views[-1] = views[-1].unflatten(1, (2, self.n_countries))
        return [v.clone() for v in views]


def _heads(out: torch.Tensor, Q: int, is_base: torch.Tensor) -> torch.Tensor:
    # the lowest quantile is the raw output; the others add softplus increments (no crossing)
    return torch.where(is_base, out, F.softplus(out)) if Q > 1 else out


def quantiles(
    lay: Layout, flat: torch.Tensor, x: torch.Tensor, design: torch.Tensor
) -> torch.Tensor:
    """Quantiles (A, n, H, Q) of the members in `flat` for x (A, n, p): forward only."""
    views = lay.views(flat)
    L = len(lay.sizes) - 1
    h = x
    for i in range(L - 1):
        h = torch.baddbmm(views[L + i], h, views[i]).relu_()
    out = torch.baddbmm(views[2 * L - 1], h, views[L - 1])
    is_base = torch.arange(out.shape[-1], device=out.device) % lay.Q == 0
    q = _heads(out, lay.Q, is_base).unflatten(-1, (lay.H, lay.Q)).cumsum(dim=-1)
    return q + torch.bmm(design, views[-1]).unsqueeze(-1)


class Step:
    """Loss gradient of a batch of members, with the flat buffers' views made once.

    `flat` and `grad` are (A, P); call `rebind` after the batch is compacted.
    """

    def __init__(self, lay: Layout, tau: torch.Tensor):
        self.lay, self.tau = lay, tau
        self.L = len(lay.sizes) - 1
        self.is_base = torch.arange(lay.H * lay.Q, device=tau.device) % lay.Q == 0

    def rebind(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        self.views, self.gviews = self.lay.views(flat), self.lay.views(grad)
        L = self.L
        self.w_t = [v.transpose(1, 2) for v in self.views[:L]]  # for dz @ W^T

    def __call__(
        self, x: torch.Tensor, design: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> None:
        """Write d(sum of members' mean pinball losses)/d(flat) into `grad`.

        Same loss as `_batched_mlp.member_loss`: per member, the mean over quantiles and over
        the available (row, horizon) targets (w = 1) of max(tau u, (tau - 1) u), u = y - q.
        """
        views, gviews, L = self.views, self.gviews, self.L
        H, Q = self.lay.H, self.lay.Q
        acts = [x]
        for i in range(L - 1):
            acts.append(torch.baddbmm(views[L + i], acts[-1], views[i]).relu_())
        out = torch.baddbmm(views[2 * L - 1], acts[-1], views[L - 1])  # (A, n, H*Q)
        q = _heads(out, Q, self.is_base).unflatten(-1, (H, Q)).cumsum(dim=-1)
        q += torch.bmm(design, views[-1]).unsqueeze(-1)
        # d pinball / d q = 1[u < 0] - tau, weighted by w / (Q * available targets)
        scale = w / (Q * w.sum(dim=(1, 2), keepdim=True).clamp_min(1.0))
        dq = torch.lt(y.unsqueeze(-1), q).to(q.dtype).sub_(self.tau).mul_(scale.unsqueeze(-1))
        # q_j = shift + out_0 + sum_{1 <= i <= j} softplus(out_i): reverse cumulative sums
        dhead = dq.flip(-1).cumsum(dim=-1).flip(-1)  # d/d(head j) = sum_{i >= j} dq_i
        torch.bmm(design.transpose(1, 2), dhead[..., 0], out=gviews[-1])  # shift = head 0's
        dz = dhead.flatten(-2)
        if Q > 1:
            dz = torch.where(self.is_base, dz, dz * torch.sigmoid(out))
        for i in range(L - 1, -1, -1):
            torch.bmm(acts[i].transpose(1, 2), dz, out=gviews[i])
            torch.sum(dz, dim=1, keepdim=True, out=gviews[L + i])
            if i:
                dz = torch.ops.aten.threshold_backward(torch.bmm(dz, self.w_t[i]), acts[i], 0)
