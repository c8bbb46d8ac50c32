"""The members of ensemble_nn's batch and the rows they train on: who they are (`Members`:
generator, initial weights, row ids; both trainers start from them), one table of all
windows' rows (`Stacked`), and each member's epoch laid out by step (`EpochRows`), so a
training step gathers nothing.

Imports: torch, numpy, `_nn_data` and `_nn_step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.solvers._nn_data import NNSpec, PreparedWindow, init_member, member_seed
from pipeline.models.solvers._nn_step import loss_weights


class Stacked:
    """All windows' rows in one table; row `dummy` (zeros, no target) pads ragged batches.

    Each field is its own contiguous table (x rows, country index; y, w transposed, (H, rows))
    so a gather lands in contiguous buffers: strided operands cost the matmuls 1.5-4x.
    """

    def __init__(self, preps: Sequence[PreparedWindow], device: torch.device, dtype: torch.dtype):
        self.n_countries = max(p.codes.size for p in preps)
        self.p = preps[0].X.shape[1]
        self.H = preps[0].Y.shape[1]
        for prep in preps:
            if prep.X.shape[1] != self.p or prep.Y.shape[1] != self.H:
                raise ValueError("all windows in one batch need the same p features and H horizons")
        offsets = np.cumsum([0] + [p.X.shape[0] for p in preps])
        self.offsets = offsets
        self.dummy = int(offsets[-1])

        def table(parts: list[np.ndarray]) -> torch.Tensor:
            full = np.concatenate([*parts, np.zeros((1, parts[0].shape[1]))])
            return torch.as_tensor(full, dtype=dtype, device=device)

        self.x = table([p.X for p in preps])
        self.cid = torch.as_tensor(np.concatenate([*(p.cidx for p in preps), [0]]), device=device)
        self.y_t = table([p.Y for p in preps]).T.contiguous()
        self.w_t = table([p.W for p in preps]).T.contiguous()
        self._out: dict[int, list[torch.Tensor]] = {}

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, n, p), country index (B, n), y and w (B, n, H) for a (B, n) tensor of row ids.

        x and the index are contiguous; y and w are transposed views. The outputs are reused
        buffers (one set per row count n), valid until the next call with the same n.
        """
        B, n = rows.shape
        flat, m = rows.flatten(), B * n
        out = self._out.get(n)
        if out is None or out[0].numel() < m * self.p:
            out = self._out[n] = [self.x.new_empty(m * k) for k in (self.p, self.H, self.H)]
            out.append(self.cid.new_empty(m))
        x = torch.index_select(self.x, 0, flat, out=out[0][: m * self.p].view(m, -1))
        y = torch.index_select(self.y_t, 1, flat, out=out[1][: m * self.H].view(self.H, m))
        w = torch.index_select(self.w_t, 1, flat, out=out[2][: m * self.H].view(self.H, m))
        c = torch.index_select(self.cid, 0, flat, out=out[3][:m])
        x, c = x.view(B, n, -1), c.view(B, n)
        return x, c, y.view(-1, B, n).permute(1, 2, 0), w.view(-1, B, n).permute(1, 2, 0)


@dataclass
class Members:
    """Every member of a batch, window-major (member k of window g at g * M + k): its
    generator (its shuffles), its initial weights and its training and validation rows (ids
    in the `Stacked` table). What both trainers (torch and native) start from."""

    gens: list[torch.Generator]
    inits: list[list[torch.Tensor]]
    train_ids: list[np.ndarray]
    val_ids: list[np.ndarray]

    @classmethod
    def of(cls, preps: Sequence[PreparedWindow], spec: NNSpec, data: Stacked) -> Members:
        """Member k of every window is seeded from (seed, k) alone, so a window's members are
        the same whoever shares the batch."""
        Q = len(spec.quantiles)
        out = cls([], [], [], [])
        for g, prep in enumerate(preps):
            for k in range(spec.parallel_models):
                gen = torch.Generator().manual_seed(member_seed(spec.seed, k))
                out.inits.append(
                    init_member(
                        gen, data.p, spec.units_per_layer, data.H * Q, data.n_countries, data.H
                    )
                )
                out.gens.append(gen)
                out.train_ids.append(prep.train_rows[k] + data.offsets[g])
                out.val_ids.append(prep.val_rows[k] + data.offsets[g])
        return out

    def n_train(self) -> np.ndarray:
        """(B,) training rows of each member."""
        return np.array([t.size for t in self.train_ids])

    def stacked_inits(self) -> list[torch.Tensor]:
        """The initial weights parameter by parameter, each (B, ...)."""
        return [torch.stack([init[i] for init in self.inits]) for i in range(len(self.inits[0]))]

    def shuffled(self, b: int) -> np.ndarray:
        """Member b's training rows in a fresh order drawn from its own generator: the same
        whoever else is batched, and the same draws in either trainer."""
        rows = self.train_ids[b]
        return rows[torch.randperm(rows.size, generator=self.gens[b]).numpy()]


def padded(rows: Sequence[np.ndarray], width: int, fill: int) -> torch.Tensor:
    """(len(rows), width) row ids, each list padded with `fill` (the dummy row)."""
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.size] = torch.from_numpy(r)
    return out


class EpochRows:
    """The coming steps' rows of every active member, by step: slot t % W holds global
    step t's batch, (A, bs, ...) contiguous, so a step only takes views (a per-step gather
    of the members' rows cost ~7 % of the trainer: issue 19, benchmarks/README.md).

    Every active member takes one step per global step, so a member that starts an epoch
    at step t finds its s-th batch at slot (t + s) % W for as many steps as its epoch has
    (<= W); its whole epoch is written when it starts, over slots its previous epoch has
    used up. Each member's rows are its own shuffle, as before; only where they wait moved.
    """

    def __init__(self, data: Stacked, bs: int, W: int, B: int, Q: int):
        self.data, self.bs, self.W, self.Q = data, bs, W, Q
        p, H = data.p, data.H
        self.x = data.x.new_empty((W, B, bs, p))
        self.cid = data.cid.new_empty((W, B, bs))
        self.y = data.x.new_empty((W, B, H, bs))
        self.ws = data.x.new_empty((W, B, H, bs))  # the step's loss weights (`loss_weights`)

    def start(self, loc: torch.Tensor, rows: torch.Tensor, t: int) -> None:
        """Members at batch positions loc (k,) start an epoch at step t on rows (k, W * bs)
        (their shuffled training rows, padded with the dummy row)."""
        k, W, bs, d = loc.numel(), self.W, self.bs, self.data
        A = self.x.shape[1]
        flat = rows.view(k, W, bs).transpose(0, 1).flatten()  # step-major
        # index_select: advanced indexing (tab[flat]) cost ~5x more here
        x = torch.index_select(d.x, 0, flat)
        cid = torch.index_select(d.cid, 0, flat)
        y, w = (
            torch.index_select(tab, 1, flat).view(-1, W * k, bs).transpose(0, 1)
            for tab in (d.y_t, d.w_t)
        )  # (W * k, H, bs)
        ws = loss_weights(w, self.Q)  # sums over (H, bs): the same count
        # the epoch's step s goes to slot (t + s) % W; as rows of (W * A, ...) tables, whole
        # (slot, member) blocks are copied at once
        slots = (torch.arange(W, device=loc.device) + t) % W
        at = (slots.unsqueeze(1) * A + loc.unsqueeze(0)).flatten()
        for into, part in ((self.x, x), (self.cid, cid), (self.y, y), (self.ws, ws)):
            into.view(W * A, -1).index_copy_(0, at, part.reshape(W * k, -1))

    def keep(self, loc: torch.Tensor) -> None:
        """Only the members at batch positions loc stay (compaction)."""
        self.x, self.cid, self.y, self.ws = (t[:, loc] for t in (self.x, self.cid, self.y, self.ws))

    def batch(self, t: int) -> tuple[torch.Tensor, ...]:
        """x (A, bs, p), country index (A, bs), y and loss weights (A, bs, H) of step t
        (views: y and the weights fastest along the rows, as `Step` takes them)."""
        s = t % self.W
        return self.x[s], self.cid[s], self.y[s].mT, self.ws[s].mT
