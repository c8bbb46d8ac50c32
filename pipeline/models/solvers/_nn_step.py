"""One training step of ensemble_nn's stacked members, written by hand (no autograd).

All members' parameters live in one 1-D buffer, parameter-major: parameter i of every
member is one contiguous (A, rows, cols) block of it (contiguous operands and outputs keep
the batched matmuls on their fast path; strided ones cost 1.5-4x); a contiguous range of
members of every block is a chunk (`_nn_update` steps the batch chunk by chunk), and the
gradient has the same layout, so one fused Adam call updates a chunk. Forward and backward are
batched matrix products over the member axis: a member's numbers never mix with another
member's. `grad_check` in tests/test_ensemble_nn.py holds `Step` to autograd on
`_batched_mlp.forward` / `member_loss` in float64.

Speed (issue 19; profile in benchmarks/README.md): every activation and gradient has a
preallocated buffer (a fresh 1.5 MB tensor per op cost more than the op: page faults), and
the head and loss run transposed, (A, H, Q, n) with the n rows fastest, one quantile at a
time, because torch's elementwise kernels are ~8x slower when an operand is broadcast
along a short inner axis (Q = 3, H = 4).

Imports: torch only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Layout:
    """Where each parameter lives in a member's flat row.

    Order (as `init_member` and the saved state): W_0..W_L (in, out), b_0..b_L (1, out),
    AR (2, C, H) stored as (2C, H): rows c and C + c are country c's a_c and phi_c.
    """

    sizes: tuple[int, ...]  # p, units..., H*Q
    n_countries: int
    H: int
    Q: int

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(rows, cols) of every parameter: weights, biases, then the AR table (2C, H)."""
        pairs = list(zip(self.sizes[:-1], self.sizes[1:], strict=True))
        return [*pairs, *[(1, b) for _, b in pairs], (2 * self.n_countries, self.H)]

    @property
    def width(self) -> int:
        """Numbers per member in the parameter-major buffer."""
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


def ar_shift(ar: torch.Tensor, cid: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """a_c + phi_c * y_t (A, n, H) for rows of countries cid (A, n) with y_t = y0 (A, n);
    ar (A, 2C, H). The same numbers as the one-hot design's matmul in `forward`."""
    C, H = ar.shape[1] // 2, ar.shape[2]
    idx = cid.unsqueeze(-1).expand(-1, -1, H)
    return torch.addcmul(ar[:, :C].gather(1, idx), ar[:, C:].gather(1, idx), y0.unsqueeze(-1))


def quantiles(
    lay: Layout, views: list[torch.Tensor], x: torch.Tensor, cid: torch.Tensor
) -> torch.Tensor:
    """Quantiles (A, n, H, Q) of the members' parameters `views` for x (A, n, p) of rows of
    countries cid (A, n)."""
    L = len(lay.sizes) - 1
    h = x
    for i in range(L - 1):
        h = torch.baddbmm(views[L + i], h, views[i]).relu_()
    out = torch.baddbmm(views[2 * L - 1], h, views[L - 1])
    is_base = torch.arange(out.shape[-1], device=out.device) % lay.Q == 0
    q = _heads(out, lay.Q, is_base).unflatten(-1, (lay.H, lay.Q)).cumsum(dim=-1)
    return q + ar_shift(views[-1], cid, x[..., 0]).unsqueeze(-1)


class _Buffers:
    """Activations and gradients of `cap` members for batches of n rows; `[:A]` of each is
    the contiguous buffer of the first A members (the batch only shrinks)."""

    def __init__(self, lay: Layout, cap: int, n: int, like: torch.Tensor):
        def empty(*shape: int) -> torch.Tensor:
            return torch.empty((cap, *shape), dtype=like.dtype, device=like.device)

        hidden = lay.sizes[1:-1]
        H, Q = lay.H, lay.Q
        self.cap, self.n = cap, n
        self.full = {
            "acts": [empty(n, u) for u in hidden],  # relu outputs (A, n, u)
            "dx": [empty(n, u) for u in hidden],  # gradients w.r.t. them
            "out": empty(H, Q, n),  # head output, transposed
            "soft": empty(H, Q, n),  # softplus(out) for quantiles >= 1
            "sig": empty(H, Q, n),  # sigmoid(out): d softplus / d out
            "q": empty(H, Q, n),  # quantiles, transposed
            "hit": empty(H, n),  # 1[y < q_j] for one quantile at a time
            "neg": empty(Q, H, n),  # -tau_j * ws
            "dz": empty(H, Q, n),  # d loss / d out, transposed
            "shift": empty(H, n),  # a_c + phi_c * y_t, transposed
            "phi": empty(H, n),  # phi_c of each row, then d loss / d phi_c
        }
        self._views: dict[int, dict] = {}

    def prefix(self, A: int) -> dict:
        """Views of the first A members' buffers, made once per A (views cost ~1 us each):
        the lists and per-quantile slices the step indexes."""
        if A not in self._views:
            v = {
                k: [b[:A] for b in t] if isinstance(t, list) else t[:A]
                for k, t in self.full.items()
            }
            Q = self.full["q"].shape[2]
            out = v["out"]
            v["out_t"] = out.view(A, -1, self.n)  # (A, H*Q, n)
            v["dz_t"] = v["dz"].view(A, -1, self.n)
            for k in ("out", "soft", "sig", "q", "dz"):
                v[k + "_j"] = [v[k][:, :, j] for j in range(Q)]
            v["neg_j"] = [v["neg"][:, j] for j in range(Q)]
            v["last_t"] = v["acts"][-1].mT if v["acts"] else None
            v["dz_tt"] = v["dz_t"].mT
            self._views[A] = v
        return self._views[A]


class Step:
    """Loss gradient of a batch of members, with the flat buffers' views made once.

    `buf` and `grad` are 1-D buffers of A members; call `rebind` after the batch is compacted.
    """

    def __init__(self, lay: Layout, tau: torch.Tensor):
        self.lay, self.tau = lay, tau
        self.taus = [float(t) for t in tau]
        self.L = len(lay.sizes) - 1
        self.bufs: _Buffers | None = None

    def rebind(self, buf: torch.Tensor, grad: torch.Tensor, A: int) -> None:
        """Bind to A members' parameters and gradient held in 1-D parameter-major buffers."""
        self.bind(self.lay.views(buf, A), self.lay.views(grad, A))

    def bind(self, views: list[torch.Tensor], gviews: list[torch.Tensor]) -> None:
        """Parameters and gradients as per-parameter (A, rows, cols) blocks (`Layout.views`
        order), each contiguous: e.g. a chunk of members of the flat buffers."""
        self.views, self.gviews = views, gviews
        A = views[0].shape[0]
        L, H, Q = self.L, self.lay.H, self.lay.Q
        self.w_t = [v.transpose(1, 2) for v in self.views[:L]]  # for dz @ W^T
        # the head's output comes out transposed, (A, H*Q, n); its bias as an (H*Q, 1) column
        self.head_wt, self.head_bt = self.views[L - 1].mT, self.views[2 * L - 1].mT
        self.ghead_w, self.ghead_b = self.gviews[L - 1], self.gviews[2 * L - 1].view(A, H * Q)
        # the AR table transposed, (A, H, C) for a_c and for phi_c: the shift is gathered
        # from it (a one-hot matmul cost ~4 us per member-step at C = 38, growing with C)
        C = self.lay.n_countries
        ar_t, gar_t = self.views[-1].mT, self.gviews[-1].mT
        self.ar_t = (ar_t[:, :, :C], ar_t[:, :, C:])
        self.gar = self.gviews[-1]
        self.gar_t = (gar_t[:, :, :C], gar_t[:, :, C:])
        # scatter_add_ is deterministic on CPU only (atomics on CUDA): elsewhere the one-hot
        # matmul, as in `forward`
        self.gather_ar = views[0].device.type == "cpu"

    def __call__(
        self, x: torch.Tensor, cid: torch.Tensor, y: torch.Tensor, ws: torch.Tensor
    ) -> None:
        """Write d(sum of members' mean pinball losses)/d(buf) into `grad`.

        Same loss as `_batched_mlp.member_loss`: per member, the mean over quantiles and over
        the available (row, horizon) targets (w = 1) of max(tau u, (tau - 1) u), u = y - q.
        x (A, n, p) contiguous, cid (A, n) the rows' country indices; y and the loss weights
        ws = `loss_weights`(w, Q) (A, n, H), fastest along n
        (`_nn_rows` gives them so) or in any other layout, which costs more.
        """
        views, gviews, L = self.views, self.gviews, self.L
        Q = self.lay.Q
        A, n = x.shape[:2]
        if self.bufs is None or self.bufs.n != n or self.bufs.cap < A:
            self.bufs = _Buffers(self.lay, A, n, x)
        b = self.bufs.prefix(A)
        # forward through the trunk, rows layout (A, n, units)
        acts = [x, *b["acts"]]
        for i in range(L - 1):
            torch.baddbmm(views[L + i], acts[i], views[i], out=acts[i + 1]).relu_()
        # head, transposed: out (A, H*Q, n) = W^T h^T + b^T
        last_t = b["last_t"] if L > 1 else x.mT
        torch.baddbmm(self.head_bt, self.head_wt, last_t, out=b["out_t"])
        out, q, soft, sig, dz = b["out_j"], b["q_j"], b["soft_j"], b["sig_j"], b["dz_j"]
        # shift = a_c + phi_c * y_t (A, H, n); y_t is column 0 of x
        idx = cid.unsqueeze(1).expand(-1, self.lay.H, -1)
        y0 = x[:, :, 0].unsqueeze(1)
        design = None if self.gather_ar else _design(cid, x[:, :, 0], self.lay.n_countries)
        if design is None:
            torch.gather(self.ar_t[0], 2, idx, out=b["shift"])
            torch.gather(self.ar_t[1], 2, idx, out=b["phi"])
            b["shift"].addcmul_(b["phi"], y0)
        else:
            torch.bmm(self.views[-1].mT, design.mT, out=b["shift"])
        torch.add(out[0], b["shift"], out=q[0])
        for j in range(1, Q):
            # q_j = q_{j-1} + softplus(out_j); d softplus = sigmoid
            torch._C._nn.softplus(out[j], 1, 20, out=soft[j])
            torch.sigmoid(out[j], out=sig[j])
            torch.add(q[j - 1], soft[j], out=q[j])
        # d pinball / d q_j = (1[y < q_j] - tau_j) * w / (Q * available targets)
        yt, ws, hit = y.mT, ws.mT, b["hit"]
        for j in range(Q):
            neg = torch.mul(ws, -self.taus[j], out=b["neg_j"][j])
            torch.lt(yt, q[j], out=hit)
            torch.addcmul(neg, ws, hit, out=dz[j])
        # q_j = shift + out_0 + sum_{1 <= i <= j} softplus(out_i): reverse cumulative sums
        for j in range(Q - 2, -1, -1):
            dz[j].add_(dz[j + 1])  # d/d(head j) = sum_{i >= j} dq_i
        # the shift is head 0's: d/d a_c and d/d phi_c sum its gradient over c's rows
        dshift = b["dz"][:, :, 0]
        if design is None:
            self.gar.zero_()
            self.gar_t[0].scatter_add_(2, idx, dshift)
            self.gar_t[1].scatter_add_(2, idx, torch.mul(dshift, y0, out=b["phi"]))
        else:
            torch.bmm(design.mT, dshift.mT, out=self.gar)
        for j in range(1, Q):
            dz[j].mul_(sig[j])
        torch.bmm(last_t, b["dz_tt"], out=self.ghead_w)
        torch.sum(b["dz_t"], dim=2, out=self.ghead_b)
        if L == 1:
            return
        g = torch.bmm(b["dz_tt"], self.head_wt, out=b["dx"][-1])
        _relu_backward(g, acts[-1], 0, grad_input=g)
        # the trunk, rows layout
        for i in range(L - 2, -1, -1):
            torch.bmm(acts[i].mT, g, out=gviews[i])
            torch.sum(g, dim=1, keepdim=True, out=gviews[L + i])
            if i:
                d = torch.bmm(g, self.w_t[i], out=b["dx"][i - 1])
                g = _relu_backward(d, acts[i], 0, grad_input=d)


def loss_weights(w: torch.Tensor, Q: int) -> torch.Tensor:
    """w / (Q * available targets) of each member's batch: w (..., n, H) of 0/1, summed over
    the last two axes (a count <= n * H: exact in float32, in any order)."""
    return w / w.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0).mul(Q)


def _design(cid: torch.Tensor, y0: torch.Tensor, C: int) -> torch.Tensor:
    """[one-hot country, one-hot country * y_t] (A, n, 2C) of rows of countries cid (A, n)."""
    onehot = F.one_hot(cid, C).to(y0.dtype)
    return torch.cat([onehot, onehot * y0.unsqueeze(-1)], dim=-1)


_relu_backward = torch.ops.aten.threshold_backward.grad_input  # grad * (relu output > 0)


def flushes_denormals() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero (torch has no getter)."""
    return torch.tensor(1e-44, dtype=torch.float32).mul(1.0).item() == 0.0


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Subnormal floats are zero in this thread while training, then as before.

    Adam's first moment of a weight whose gradient stays 0 (a dead ReLU unit) decays by
    beta1 per step into the subnormal range and sticks there (0.9 * k * 2^-149 rounds back
    to k * 2^-149 for k <= 4): ~8 % of the moments of a seed window, every step. Each such
    number costs the CPU a microcode assist, ~1/4 of the trainer's time (issue 19,
    benchmarks/README.md). Flushed, those moments are 0; a parameter could only move by
    lr * 1e-45 / eps from them anyway. The setting is per thread (MXCSR), so it is set and
    restored around the fit in the thread that runs it (a Dask worker's executor thread).
    """
    before = flushes_denormals()
    torch.set_flush_denormal(True)  # False (and nothing set) where the CPU cannot
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
