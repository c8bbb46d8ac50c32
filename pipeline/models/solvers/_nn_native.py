"""ensemble_nn's trainer on the native kernel (`native/nn_kernel.c`): float32 on the CPU.

One C call runs every active member through its whole epoch, member after member (its
weights, Adam moments and activations stay in L1/L2 for its ~53 steps on the seed), and one
more call gives their validation losses; Python keeps the epoch loop: shuffles (each
member's own generator, as the torch path draws them), early stopping, best weights. Members never meet:
a member's steps read only its own parameter row and its own rows, so its bits do not
depend on its batch-mates, their order or their count. Each member's Adam step count is its
own (epochs x steps per epoch), which equals the torch path's shared count.

The kernel is built twice (AVX-512, AVX2 + FMA) from one source with bits that do not
depend on the variant; `load` picks the widest the CPU runs. Without either (no compiler at
install, another ISA, another OS) `available()` is False and the torch path runs.

Imports: torch, numpy, ctypes, solvers.native and the `_nn_*` modules it mirrors.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.models.solvers._nn_data import ADAM_BETAS, ADAM_EPS, NNSpec
from pipeline.models.solvers._nn_rows import Members, Stacked
from pipeline.models.solvers._nn_step import Layout
from pipeline.models.solvers.native import available, load

__all__ = ["available", "load", "train_native"]

MAX_LAYERS, MAX_QUANTILES = 256, 256  # MAXL, MAXQ in nn_kernel.c
ALIGN = 16  # floats: each parameter of a member's row starts on a 64-byte line


class RowLayout:
    """A member's parameters as one float32 row: `Layout`'s parameters in order, each at a
    64-byte aligned offset (the gaps stay zero: zero gradient, so Adam leaves them 0)."""

    def __init__(self, lay: Layout):
        self.lay = lay
        self.offsets, at = [], 0
        for a, b in lay.shapes:
            self.offsets.append(at)
            at += -(-a * b // ALIGN) * ALIGN
        self.width = at

    def dims(self, bs: int) -> np.ndarray:
        """The sizes the kernel reads, int32: layers, countries, H, Q, batch size, row width,
        layer sizes and parameter offsets; ValueError past the kernel's limits."""
        lay = self.lay
        L = len(lay.sizes) - 1
        if L > MAX_LAYERS or lay.Q > MAX_QUANTILES:
            raise ValueError(
                f"the native kernel takes at most {MAX_LAYERS} layers and {MAX_QUANTILES} "
                f"quantiles; got {L} and {lay.Q}"
            )
        head = [L, lay.n_countries, lay.H, lay.Q, bs, self.width]
        return np.array([*head, *lay.sizes, *self.offsets], dtype=np.int32)

    def pack(self, params: Sequence[torch.Tensor]) -> np.ndarray:
        """(B, width) float32 rows from per-parameter stacks (B, rows, cols) in order."""
        B = params[0].shape[0]
        out = np.zeros((B, self.width), dtype=np.float32)
        for o, p in zip(self.offsets, params, strict=True):
            flat = p.reshape(B, -1).to(torch.float32).numpy()
            out[:, o : o + flat.shape[1]] = flat
        return out

    def unpack(self, rows: np.ndarray) -> list[torch.Tensor]:
        """Per-parameter stacks (B, rows, cols) of (B, width) rows (`Layout.views` shapes)."""
        B = rows.shape[0]
        return [
            torch.from_numpy(rows[:, o : o + a * b].reshape(B, a, b).copy())
            for o, (a, b) in zip(self.offsets, self.lay.shapes, strict=True)
        ]


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class Kernel:
    """The C calls with their fixed arguments: dims, hyper-parameters, the data tables."""

    def __init__(self, lib: ctypes.CDLL, rl: RowLayout, spec: NNSpec, data: Stacked):
        self.lib, self.rl = lib, rl
        self.dims = rl.dims(spec.batch_size)
        self.taus = np.asarray(spec.quantiles, dtype=np.float64)
        self.hyper = np.array([spec.learning_rate, *ADAM_BETAS, ADAM_EPS], dtype=np.float64)
        # the row tables, row-major, rows of the dummy row last (zeros, weight 0)
        self.X = np.ascontiguousarray(data.x.cpu().numpy(), dtype=np.float32)
        self.cid = np.ascontiguousarray(data.cid.cpu().numpy(), dtype=np.int32)
        self.Y = np.ascontiguousarray(data.y_t.cpu().numpy().T, dtype=np.float32)
        self.W = np.ascontiguousarray(data.w_t.cpu().numpy().T, dtype=np.float32)
        self._tables = [_ptr(t) for t in (self.X, self.cid, self.Y, self.W)]

    def train(
        self,
        members: np.ndarray,
        rows: np.ndarray,
        n_steps: np.ndarray,
        t0: np.ndarray,
        params: np.ndarray,
        m: np.ndarray,
        v: np.ndarray,
    ) -> None:
        """members (A,) global ids take n_steps (A,) steps on rows (A, >= steps * bs) int32
        from step count t0 (A,); params, m, v (B, width) updated in place."""
        members = np.ascontiguousarray(members, dtype=np.int64)
        n_steps = np.ascontiguousarray(n_steps, dtype=np.int32)
        t0 = np.ascontiguousarray(t0, dtype=np.int64)
        for a in (rows, params, m, v):
            assert a.flags.c_contiguous
        rc = self.lib.nn_train(
            _ptr(self.dims), _ptr(self.hyper), _ptr(self.taus), members.size, _ptr(members),
            _ptr(rows), rows.shape[1], _ptr(n_steps), _ptr(t0), _ptr(params), _ptr(m), _ptr(v),
            *self._tables,
        )  # fmt: skip
        if rc:
            raise MemoryError("the native ensemble_nn kernel could not allocate its buffers")

    def validate(
        self, members: np.ndarray, rows: np.ndarray, n_rows: np.ndarray, params: np.ndarray
    ) -> np.ndarray:
        """Validation loss (A,) of members on rows (A, >= n_rows) int32."""
        members = np.ascontiguousarray(members, dtype=np.int64)
        n_rows = np.ascontiguousarray(n_rows, dtype=np.int32)
        out = np.empty(members.size, dtype=np.float64)
        rc = self.lib.nn_validate(
            _ptr(self.dims), _ptr(self.taus), members.size, _ptr(members), _ptr(rows),
            rows.shape[1], _ptr(n_rows), _ptr(params), *self._tables, _ptr(out),
        )  # fmt: skip
        if rc:
            raise MemoryError("the native ensemble_nn kernel could not allocate its buffers")
        return out


def train_native(
    lay: Layout, data: Stacked, spec: NNSpec, members: Members
) -> tuple[list[torch.Tensor], dict[str, np.ndarray]]:
    """`_batched_mlp.train_members` on the kernel: the members' best parameters (B, ...) in
    `Layout.views` shapes and their stats. The same members, rows, shuffles, epochs and
    early stopping; float32 arithmetic in the kernel's own order."""
    lib = load()  # the widest variant this CPU runs
    if lib is None:
        raise RuntimeError("the native ensemble_nn kernel is not built for this CPU")
    bs, B = spec.batch_size, len(members.inits)
    rl = RowLayout(lay)
    kern = Kernel(lib, rl, spec, data)
    params = rl.pack(members.stacked_inits())
    m, v = np.zeros_like(params), np.zeros_like(params)
    best = params.copy()
    n_train = members.n_train()
    spe = -(-n_train // bs)
    n_val = np.array([t.size for t in members.val_ids], dtype=np.int32)
    val_rows = np.full((B, max(int(n_val.max()), 1)), data.dummy, dtype=np.int32)
    for b, ids in enumerate(members.val_ids):
        val_rows[b, : ids.size] = ids
    epoch = np.zeros(B, dtype=np.int64)
    wait = np.zeros(B, dtype=np.int64)
    best_val = np.full(B, np.inf)
    best_epoch = np.zeros(B, dtype=np.int64)
    epoch_rows = np.empty((B, int(spe.max()) * bs), dtype=np.int32)
    active = np.arange(B)
    while active.size:
        rows = epoch_rows[: active.size]
        rows.fill(data.dummy)  # pads each member's short last batch (weight 0)
        for i, b in enumerate(active):
            rows[i, : n_train[b]] = members.shuffled(b)
        kern.train(active, rows, spe[active], epoch[active] * spe[active], params, m, v)
        val = kern.validate(active, np.ascontiguousarray(val_rows[active]), n_val[active], params)
        epoch[active] += 1
        improved = val < best_val[active]
        imp = active[improved]
        best_val[imp], best_epoch[imp], wait[imp] = val[improved], epoch[imp], 0
        best[imp] = params[imp]
        wait[active[~improved]] += 1
        stop = (wait[active] >= spec.patience) | (epoch[active] >= spec.epochs)
        active = active[~stop]
    stats = {"epochs_trained": epoch, "best_epoch": best_epoch, "val_loss": best_val}
    return rl.unpack(best), stats
