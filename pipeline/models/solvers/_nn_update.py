"""One optimizer step of ensemble_nn's batch: the members in cache-sized chunks, each
chunk's hand-written gradient (`_nn_step.Step`) followed at once by its Adam update.

Why chunks (issue 19, benchmarks/README.md "third pass"): at A = 360 members every
activation and gradient of the step is ~1.5 MB, so each op streams its operands from L3
(2 MB of L2 here) and the products ran at ~half their isolated speed. Chunks of 120-239
members (operands of 0.5-1 MB; one gradient buffer reused by every chunk, still warm when
Adam reads it) cost ~14 % less per member-step at A = 360; chunks under ~100 lose more to
each op's fixed cost than they gain. Members never mix: a chunk is a contiguous range of
the member axis of every parameter block, and Adam is elementwise.

Imports: torch (its Adam), `_nn_data` and `_nn_step`.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch.optim.adam import adam as adam_step

from pipeline.models.solvers._nn_data import ADAM_BETAS, ADAM_EPS
from pipeline.models.solvers._nn_step import Layout, Step, _Buffers

# members per chunk: at least CHUNK (smaller chunks lose more to the fixed cost of each op
# than they gain in cache), fewer than 2 * CHUNK; fixed, so never machine-dependent
CHUNK = 120


class Adam:
    """torch's Adam on per-parameter blocks with a shared step count: its fused kernel
    called directly on CPU and CUDA (torch.optim's wrapper costs more than the update at
    these sizes), torch.optim's functional Adam elsewhere."""

    def __init__(self, lr: float, device: torch.device):
        self.lr = lr
        self.fused = device.type in ("cpu", "cuda")
        self.count = torch.zeros((), dtype=torch.float32, device=device)
        self.kw = dict(
            amsgrad=False, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=lr,
            weight_decay=0.0, eps=ADAM_EPS, maximize=False,
        )  # fmt: skip

    def tick(self) -> None:
        """One more step for every parameter (what torch.optim.adam does before updating)."""
        self.count.add_(1)

    def update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        m: list[torch.Tensor],
        v: list[torch.Tensor],
    ) -> None:
        if self.fused:
            torch._fused_adam_(params, grads, m, v, [], [self.count] * len(params), **self.kw)
        else:
            # the functional Adam increments the steps itself: give it copies at count - 1
            steps = [self.count - 1 for _ in params]
            adam_step(params, grads, m, v, [], steps, fused=False, **self.kw)


class Update:
    """Gradient and Adam step of a batch of A members held in flat parameter-major buffers
    (`Layout.views`): parameters `buf`, Adam's moments `m` and `v`. Call `rebind` after the
    batch is compacted."""

    def __init__(self, lay: Layout, tau: torch.Tensor, lr: float, device: torch.device):
        self.lay, self.tau = lay, tau
        self.adam = Adam(lr, device)
        # the chunks are for a CPU's caches; on a GPU they would only add kernel launches
        self.chunked = device.type == "cpu"
        self.grad: torch.Tensor | None = None  # one chunk's gradient, reused by every chunk
        self.bufs: _Buffers | None = None  # the step's activations, shared by the chunks
        self.parts: list[tuple[int, int, Step, list, list, list, list]] = []

    def rebind(self, buf: torch.Tensor, m: torch.Tensor, v: torch.Tensor, A: int) -> None:
        """Bind to A members' parameters and Adam moments (after a compaction), chunk by chunk."""
        lay = self.lay
        self.parts = []
        if A == 0:
            return
        k = max(1, A // CHUNK) if self.chunked else 1
        edges = [round(i * A / k) for i in range(k + 1)]  # k chunks of equal size +- 1
        cap = max(hi - lo for lo, hi in pairwise(edges))
        if self.grad is None or self.grad.numel() < cap * lay.width:
            self.grad = buf.new_empty(cap * lay.width)
        pv, mv, vv = (lay.views(t, A) for t in (buf, m, v))
        gviews: dict[int, list[torch.Tensor]] = {}
        for lo, hi in pairwise(edges):
            if hi - lo not in gviews:
                gviews[hi - lo] = lay.views(self.grad, hi - lo)
            g = gviews[hi - lo]
            step = Step(lay, self.tau)
            step.bind([p[lo:hi] for p in pv], g)
            chunk = [[t[lo:hi] for t in views] for views in (pv, mv, vv)]
            self.parts.append((lo, hi, step, chunk[0], g, chunk[1], chunk[2]))

    def __call__(
        self, x: torch.Tensor, cid: torch.Tensor, y: torch.Tensor, ws: torch.Tensor
    ) -> None:
        """One Adam step of every member on its rows: x (A, n, p), cid (A, n), y and loss
        weights ws (A, n, H) as `Step` takes them."""
        n = x.shape[1]
        if self.bufs is None or self.bufs.n != n:
            cap = max(hi - lo for lo, hi, *_ in self.parts)
            self.bufs = _Buffers(self.lay, cap, n, x)
        self.adam.tick()
        whole = len(self.parts) == 1  # then no slices (the small batches' ops are all overhead)
        for lo, hi, step, params, grads, m, v in self.parts:
            step.bufs = self.bufs
            if whole:
                step(x, cid, y, ws)
            else:
                step(x[lo:hi], cid[lo:hi], y[lo:hi], ws[lo:hi])
            self.adam.update(params, grads, m, v)
