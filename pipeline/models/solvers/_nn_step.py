"""One training step of ensemble_nn's stacked members, written by hand (no autograd).

All members' parameters live in one 1-D buffer, parameter-major: parameter i of every
member is one contiguous (A, rows, cols) block of it (contiguous operands and outputs keep
the batched matmuls on their fast path; strided ones cost 1.5-4x). The gradient is one such
buffer too, so a single fused Adam call updates the whole batch. Forward and backward are batched matrix products over the member axis: a member's
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

    def views(self, buf: torch.Tensor, A: int) -> list[torch.Tensor]:
        """Contiguous (A, rows, cols) views of a 1-D parameter-major buffer, in order."""
        out, at = [], 0
        for a, b in self.shapes:
            out.append(buf[at : at + A * a * b].view(A, a, b))
            at += A * a * b
        return out

    def pack(self, params: list[torch.Tensor]) -> torch.Tensor:
        """1-D parameter-major buffer from per-parameter stacks (A, ...) in order."""
        return torch.cat([p.reshape(-1) for p in params])

    def saved(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-parameter stacks in the saved layout (the AR table back to (A, 2, C, H))."""
        return [*params[:-1], params[-1].unflatten(1, (2, self.n_countries))]


def _heads(out: torch.Tensor, Q: int, is_base: torch.Tensor) -> torch.Tensor:
    # the lowest quantile is the raw output; the others add softplus increments (no crossing)
    return torch.where(is_base, out, F.softplus(out)) if Q > 1 else out


def quantiles(
    lay: Layout, views: list[torch.Tensor], x: torch.Tensor, design: torch.Tensor
) -> torch.Tensor:
    """Quantiles (A, n, H, Q) of the members' parameters `views` for x (A, n, p)."""
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

    `buf` and `grad` are 1-D buffers of A members; call `rebind` after the batch is compacted.
    """

    def __init__(self, lay: Layout, tau: torch.Tensor):
        self.lay, self.tau = lay, tau
        self.L = len(lay.sizes) - 1
        self.is_base = torch.arange(lay.H * lay.Q, device=tau.device) % lay.Q == 0

    def rebind(self, buf: torch.Tensor, grad: torch.Tensor, A: int) -> None:
        self.views, self.gviews = self.lay.views(buf, A), self.lay.views(grad, A)
        L = self.L
        self.w_t = [v.transpose(1, 2) for v in self.views[:L]]  # for dz @ W^T

    def __call__(
        self, x: torch.Tensor, design: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> None:
        """Write d(sum of members' mean pinball losses)/d(buf) into `grad`.

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
