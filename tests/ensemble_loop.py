"""Reference implementation: ensemble_nn members trained one at a time, the plain way.

A `torch.nn` module per member, `torch.optim.Adam`, a Python loop over epochs and
minibatches. It is the oracle the batched trainer is tested against and the baseline the
benchmark times. It shares only the data side (rows, scaling, validation blocks, seeds and
initial weights) with `_batched_mlp`; the network, loss, optimizer and early stopping are
written independently.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.models.solvers._batched_mlp import WindowResult, predict_state, window_state
from pipeline.models.solvers._nn_data import (
    ADAM_BETAS,
    ADAM_EPS,
    NNSpec,
    PreparedWindow,
    WindowData,
    init_member,
    member_seed,
    prepare_window,
)


class _MemberNet(nn.Module):
    def __init__(self, init: list[torch.Tensor], n_hidden: int, H: int, Q: int):
        super().__init__()
        weights, biases = init[: n_hidden + 1], init[n_hidden + 1 : 2 * n_hidden + 2]
        self.layers = nn.ModuleList()
        for w, b in zip(weights, biases, strict=True):
            lin = nn.Linear(w.shape[0], w.shape[1], dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w.T)
                lin.bias.copy_(b[0])
            self.layers.append(lin)
        self.intercept = nn.Parameter(init[-1][0].clone())
        self.slope = nn.Parameter(init[-1][1].clone())
        self.H, self.Q = H, Q

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = x
        for lin in self.layers[:-1]:
            h = torch.relu(lin(h))
        out = self.layers[-1](h).reshape(-1, self.H, self.Q)
        levels = [out[:, :, 0] + self.intercept[c] + self.slope[c] * x[:, :1]]
        for j in range(1, self.Q):
            levels.append(levels[-1] + nn.functional.softplus(out[:, :, j]))
        return torch.stack(levels, dim=-1)  # (n, H, Q)


def _loss(q: torch.Tensor, y: torch.Tensor, w: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    err = y.unsqueeze(-1) - q
    check = torch.where(err >= 0, tau * err, (tau - 1.0) * err).mean(dim=-1)
    return (check * w).sum() / w.sum()


def train_member_loop(
    prep: PreparedWindow, spec: NNSpec, member: int, device: torch.device, dtype: torch.dtype
) -> tuple[list[torch.Tensor], int, int, float]:
    """Train one member; return its best parameters (batched layout), epochs, best epoch, loss."""
    Q, H, p = len(spec.quantiles), prep.Y.shape[1], prep.X.shape[1]
    gen = torch.Generator().manual_seed(member_seed(spec.seed, member))
    init = init_member(gen, p, spec.units_per_layer, H * Q, prep.codes.size, H)
    net = _MemberNet(init, len(spec.units_per_layer), H, Q).to(device=device, dtype=dtype)
    opt = torch.optim.Adam(
        net.parameters(), lr=spec.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, foreach=False
    )
    X, Y, W = (torch.as_tensor(a, dtype=dtype, device=device) for a in (prep.X, prep.Y, prep.W))
    C = torch.as_tensor(prep.cidx, device=device)
    tau = torch.as_tensor(spec.quantiles, dtype=dtype, device=device)
    train, val = prep.train_rows[member], torch.as_tensor(prep.val_rows[member], device=device)
    best_loss, best_state, best_epoch, wait, epoch = float("inf"), None, 0, 0, 0
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    while epoch < spec.epochs and wait < spec.patience:
        order = torch.as_tensor(train[torch.randperm(train.size, generator=gen).numpy()])
        for start in range(0, train.size, spec.batch_size):
            rows = order[start : start + spec.batch_size].to(device)
            opt.zero_grad()
            _loss(net(X[rows], C[rows]), Y[rows], W[rows], tau).backward()
            opt.step()
        epoch += 1
        with torch.no_grad():
            val_loss = float(_loss(net(X[val], C[val]), Y[val], W[val], tau))
        if val_loss < best_loss:
            best_loss, best_epoch, wait = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            wait += 1
    net.load_state_dict(best_state)
    lins = list(net.layers)
    params = [lin.weight.detach().T for lin in lins] + [lin.bias.detach()[None] for lin in lins]
    params.append(torch.stack([net.intercept.detach(), net.slope.detach()]))
    return params, epoch, best_epoch, best_loss


def fit_predict_member_loop(
    window: WindowData, spec: NNSpec, device: torch.device, dtype: torch.dtype = torch.float32
) -> WindowResult:
    """One window's ensemble, members trained one after another (baseline and oracle)."""
    prep = prepare_window(window, spec)
    trained = [train_member_loop(prep, spec, k, device, dtype) for k in range(spec.parallel_models)]
    params = [torch.stack([t[0][i] for t in trained]) for i in range(len(trained[0][0]))]
    stats = {
        "epochs_trained": np.array([t[1] for t in trained]),
        "best_epoch": np.array([t[2] for t in trained]),
        "val_loss": np.array([t[3] for t in trained]),
    }
    state = window_state(prep, spec, params, stats)
    pred = predict_state(state, window.X_new, window.country_new)
    return WindowResult(pred=pred, epochs=state["epochs_trained"], state=state)
