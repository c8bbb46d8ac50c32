"""Batched core of ensemble_nn: G windows x M members trained as one stacked network.

Every parameter carries a leading member axis B = G * M and the layers are batched matrix
products, so one optimizer step advances every member at once. Each member keeps its own
epochs (own shuffles of its own training rows), validation block, early stopping and best
weights; a member that stops is removed from the batch ("compaction"), so its weights can no
longer change and the remaining members stop paying for it. Because all members start
together and step on every step, they share Adam's step count, which lets one fused Adam
call update a whole chunk of members (`_nn_update`).

Imports: torch, numpy and the other `_nn_*` modules of solvers/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.solvers import _nn_native
from pipeline.models.solvers._nn_data import (
    NNSpec,
    PreparedWindow,
    WindowData,
    encode_countries,
    prepare_window,
)
from pipeline.models.solvers._nn_rows import EpochRows, Members, Stacked, padded
from pipeline.models.solvers._nn_step import Layout, flush_denormals, quantiles
from pipeline.models.solvers._nn_update import Update


@dataclass
class WindowResult:
    """Forecast and fitted ensemble of one window.

    pred (c, H, Q) in original units, or (c, Q) when the window's y was 1-D;
    epochs (M,) epochs each member trained; state: arrays that reload the ensemble with
    `predict_state` / `factors_state`: param0..param{2L+2} the members' stacked weights
    (layer weights, then biases, then the AR table (M, 2, C, H)), codes (C,) country codes,
    x_loc / x_scale (C, p) the per-country scaling, quantiles, multi_horizon,
    epochs_trained, best_epoch and val_loss (M,).
    """

    pred: np.ndarray
    epochs: np.ndarray
    state: dict[str, np.ndarray]


def forward(
    params: Sequence[torch.Tensor], x: torch.Tensor, design: torch.Tensor, Q: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantiles (B, n, H, Q) and factor activations (B, n, u_L) for x (B, n, p).

    design (B, n, 2C) = [one-hot country, one-hot country * y_t]: a matmul with the AR table
    (B, 2, C, H) gives a_c + phi_c * y_t, whose backward (unlike a gather's) is deterministic
    on CUDA too. The head's lowest quantile per horizon gets that shift; the others add
    cumulative softplus increments, so quantiles cannot cross.
    """
    n_lin = (len(params) - 1) // 2
    weights, biases, ar = params[:n_lin], params[n_lin : 2 * n_lin], params[-1]
    h = x
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        h = torch.relu(torch.baddbmm(b, h, w))
    out = torch.baddbmm(biases[-1], h, weights[-1])  # (B, n, H*Q), quantile fastest
    shift = torch.bmm(design, ar.flatten(1, 2))  # (B, n, H)
    if Q > 1:
        # softplus over the whole contiguous block is ~6x faster than over a strided slice
        is_base = torch.arange(out.shape[-1], device=out.device) % Q == 0
        out = torch.where(is_base, out, F.softplus(out))
    q = out.unflatten(-1, (-1, Q)).cumsum(dim=-1) + shift.unsqueeze(-1)
    return q, h


def member_loss(
    q: torch.Tensor, y: torch.Tensor, w: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """Per-member mean pinball loss over quantiles and available (row, horizon) targets."""
    u = y.unsqueeze(-1) - q
    pin = (tau * u + torch.relu(-u)).mean(dim=-1)  # = max(tau*u, (tau-1)*u)
    return (pin * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp_min(1.0)


def design_matrix(X: np.ndarray, cidx: np.ndarray, n_countries: int) -> np.ndarray:
    """[one-hot country, one-hot country * y_t] (n, 2C) for the AR term."""
    onehot = np.eye(n_countries)[cidx]
    return np.concatenate([onehot, onehot * X[:, :1]], axis=1)


BACKENDS = ("auto", "native", "torch")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """'auto' -> 'native' (the fused C kernel, `_nn_native`) for float32 on a CPU where it is
    built, else 'torch'. The two round differently, so a fit's key names the one it ran."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    fits = device.type == "cpu" and dtype == torch.float32
    if backend == "auto":
        return "native" if fits and _nn_native.available() else "torch"
    if backend == "native" and not fits:
        raise ValueError(f"the native backend trains float32 on the CPU; got {device}, {dtype}")
    if backend == "native" and not _nn_native.available():
        raise RuntimeError(
            "this fit asks for ensemble_nn's native kernel, which is not built for this "
            "machine: install with a C compiler (`pip install -e .`) or use backend 'torch'"
        )
    return backend


def train_members(
    preps: Sequence[PreparedWindow],
    spec: NNSpec,
    device: torch.device,
    dtype: torch.dtype,
    backend: str = "auto",
) -> tuple[list[torch.Tensor], dict[str, np.ndarray]]:
    """Train all G*M members; return their best parameters (B, ...) and per-member stats.

    A member's epoch is its own: ceil(n_train / batch_size) steps over a fresh shuffle of its
    training rows (the last batch may be short; padding rows carry zero weight). At the end
    of each of its epochs it is validated, and it stops after `patience` epochs without
    improvement or after `epochs`; it is then dropped from the batch with its best weights.
    Gradients are hand-written (`_nn_step`) and the members' parameters and Adam moments are
    each one buffer; a step is a few batched matmuls and a fused Adam call per chunk of
    members (`_nn_update`). With backend 'native' (`resolve_backend`; the default for float32
    on a CPU where it is built) the same members, rows and early stopping run in the fused C
    kernel instead (`_nn_native`).
    """
    Q = len(spec.quantiles)
    data = Stacked(preps, device, dtype)
    members = Members.of(preps, spec, data)
    lay = Layout((data.p, *spec.units_per_layer, data.H * Q), data.n_countries, data.H, Q)
    if resolve_backend(backend, device, dtype) == "native":
        best, stats = _nn_native.train_native(lay, data, spec, members)
    else:
        best, stats = _train_torch(lay, data, spec, members)
    return lay.saved(best), stats


def _train_torch(
    lay: Layout, data: Stacked, spec: NNSpec, members: Members
) -> tuple[list[torch.Tensor], dict[str, np.ndarray]]:
    """`train_members` with the batched torch step (as `_nn_native.train_native` with the
    kernel): the members' best parameters (B, ...) in `Layout.views` shapes and their stats."""
    device, dtype = data.x.device, data.x.dtype  # the tables are on the training device
    bs, Q, B = spec.batch_size, len(spec.quantiles), len(members.inits)
    tau = torch.as_tensor(spec.quantiles, dtype=dtype, device=device)
    steps_per_epoch = -(-members.n_train() // bs)
    W = int(steps_per_epoch.max())
    val_ids = members.val_ids
    val_table = padded(val_ids, max(v.size for v in val_ids), data.dummy).to(device)
    buf = lay.pack(members.stacked_inits()).to(device=device, dtype=dtype)
    best = [v.clone() for v in lay.views(buf, B)]  # (B, ...) by global id; never compacted
    exp_avg, exp_avg_sq = torch.zeros_like(buf), torch.zeros_like(buf)
    # every active member has taken every step so far, so one shared Adam step count is exact
    update = Update(lay, tau, spec.learning_rate, device)
    update.rebind(buf, exp_avg, exp_avg_sq, B)

    pos = np.zeros(B, dtype=np.int64)  # step within the member's current epoch
    epoch = np.zeros(B, dtype=np.int64)  # epochs completed
    wait = np.zeros(B, dtype=np.int64)  # epochs since the last improvement
    best_val = np.full(B, np.inf)
    best_epoch = np.zeros(B, dtype=np.int64)

    def shuffled(ids: np.ndarray) -> torch.Tensor:
        return padded([members.shuffled(b) for b in ids], W * bs, data.dummy).to(device)

    active = np.arange(B)  # global ids of the members still training, in batch order
    rows = EpochRows(data, bs, W, B, Q)  # the coming steps' rows of each active member
    t = 0  # global step
    rows.start(torch.arange(B, device=device), shuffled(active), t)
    # run the steps until the next member's epoch ends, then validate and stop who is done
    while active.size:
        k = int((steps_per_epoch[active] - pos[active]).min())
        for _ in range(k):
            update(*rows.batch(t))
            t += 1
        pos[active] += k
        ended = np.flatnonzero(pos[active] == steps_per_epoch[active])
        due = active[ended]  # global ids of the members whose epoch ended
        loc = torch.as_tensor(ended, device=device)
        sub = [v[loc] for v in lay.views(buf, active.size)]
        val = _validate(lay, sub, data, val_table[torch.as_tensor(due, device=device)], tau)
        epoch[due] += 1
        pos[due] = 0
        improved = val < best_val[due]
        if improved.any():
            imp = due[improved]
            best_val[imp], best_epoch[imp], wait[imp] = val[improved], epoch[imp], 0
            keep = torch.as_tensor(np.flatnonzero(improved), device=device)
            imp_t = torch.as_tensor(imp, device=device)
            for b_all, s_new in zip(best, sub, strict=True):
                b_all[imp_t] = s_new[keep]
        wait[due[~improved]] += 1
        stop = (wait[due] >= spec.patience) | (epoch[due] >= spec.epochs)
        if (~stop).any():
            rows.start(torch.as_tensor(ended[~stop], device=device), shuffled(due[~stop]), t)
        if stop.any():
            # compaction: stopped members leave the batch, so nothing can touch them again
            keep_rows = np.ones(active.size, dtype=bool)
            keep_rows[ended[stop]] = False
            keep_t = torch.as_tensor(np.flatnonzero(keep_rows), device=device)
            n = int(keep_t.numel())
            buf, exp_avg, exp_avg_sq = (
                lay.pack([v[keep_t] for v in lay.views(packed, active.size)])
                for packed in (buf, exp_avg, exp_avg_sq)
            )
            update.rebind(buf, exp_avg, exp_avg_sq, n)
            rows.keep(keep_t)
            active = active[keep_rows]
    return best, {"epochs_trained": epoch, "best_epoch": best_epoch, "val_loss": best_val}


VAL_CHUNK = 32


def _validate(
    lay: Layout, params: list[torch.Tensor], data: Stacked, rows: torch.Tensor, tau: torch.Tensor
) -> np.ndarray:
    """Validation loss (k,) of k members' `params` on their rows (k, n), VAL_CHUNK members at
    a time: the forward's fresh activations then stay small (k = 360 members of ~450 rows,
    load 6: 87-115 ms in one go, 74 in chunks of 120, 61-64 in chunks of 16 or 32)."""
    out = []
    for lo in range(0, rows.shape[0], VAL_CHUNK):
        sl = slice(lo, lo + VAL_CHUNK)
        x, cid, y, w = data.split(rows[sl])
        out.append(member_loss(quantiles(lay, [p[sl] for p in params], x, cid), y, w, tau))
    return torch.cat(out).cpu().numpy()


def train_predict_windows(
    windows: Sequence[WindowData],
    spec: NNSpec,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> list[WindowResult]:
    """Train every window's ensemble as one batched network and forecast its X_new.

    A window's result does not depend on which other windows share the batch: each member's
    generator is seeded from (seed, member) and its rows come only from its own window.
    backend (`resolve_backend`): 'native' the fused C kernel, 'torch' the batched torch step.
    """
    if not windows:
        raise ValueError("windows must hold at least one WindowData; got none")
    preps = [prepare_window(w, spec) for w in windows]
    with flush_denormals():
        best, stats = train_members(preps, spec, device, dtype, backend)
    M = spec.parallel_models
    results = []
    for g, prep in enumerate(preps):
        sl = slice(g * M, (g + 1) * M)
        state = window_state(
            prep, spec, [p[sl] for p in best], {k: v[sl] for k, v in stats.items()}
        )
        pred = _predict_prepared(state, prep.X_new, prep.cidx_new)
        results.append(
            WindowResult(pred=pred, epochs=stats["epochs_trained"][sl].copy(), state=state)
        )
    return results


def window_state(
    prep: PreparedWindow, spec: NNSpec, params: list[torch.Tensor], stats: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """One window's `WindowResult.state` from its members' best parameters and stats."""
    n_c = prep.codes.size
    state = {f"param{i}": p.detach().cpu().double().numpy() for i, p in enumerate(params)}
    # the AR table was padded to the batch's largest country count
    state[f"param{len(params) - 1}"] = state[f"param{len(params) - 1}"][:, :, :n_c]
    state.update(
        codes=prep.codes,
        x_loc=prep.x_loc,
        x_scale=prep.x_scale,
        quantiles=np.asarray(spec.quantiles),
        multi_horizon=np.asarray(prep.multi_horizon),
        **{k: np.asarray(v) for k, v in stats.items()},
    )
    return state


def _state_forward(
    state: dict[str, np.ndarray], X: np.ndarray, cidx: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Members' quantiles and factors for scaled X, in float64 on the CPU.

    Prediction is cheap, so it always runs here: forecasts from a reloaded state are then
    bit-identical to the ones returned at fit time, whatever device trained the weights.
    """
    n = sum(1 for k in state if k.startswith("param"))
    params = [torch.as_tensor(state[f"param{i}"], dtype=torch.float64) for i in range(n)]
    M, n_c, Q = params[0].shape[0], state["codes"].size, state["quantiles"].size
    x = torch.as_tensor(X, dtype=torch.float64).expand(M, -1, -1)
    design = torch.as_tensor(design_matrix(X, cidx, n_c)).expand(M, -1, -1)
    with torch.no_grad():
        return forward(params, x, design, Q)


def _predict_prepared(state: dict[str, np.ndarray], X: np.ndarray, cidx: np.ndarray) -> np.ndarray:
    q = _state_forward(state, X, cidx)[0].mean(dim=0).numpy()
    # back to original units: every horizon's target was scaled like y_t (column 0)
    q = q * state["x_scale"][cidx, 0, None, None] + state["x_loc"][cidx, 0, None, None]
    q = np.sort(q, axis=-1)
    return q if bool(state["multi_horizon"]) else q[:, 0]


def _scaled_inputs(
    state: dict[str, np.ndarray], X: np.ndarray, country: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    p = state["x_loc"].shape[1]
    if X.ndim != 2 or X.shape[1] != p or np.asarray(country).shape != (X.shape[0],):
        raise ValueError(f"X must be (m, {p}) and country (m,); got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X must be finite")
    cidx = encode_countries(state["codes"], country)
    return (X - state["x_loc"][cidx]) / state["x_scale"][cidx], cidx


def predict_state(state: dict[str, np.ndarray], X: np.ndarray, country: np.ndarray) -> np.ndarray:
    """Ensemble forecast (m, H, Q) or (m, Q) in original units from a window's state."""
    return _predict_prepared(state, *_scaled_inputs(state, X, country))


def factors_state(state: dict[str, np.ndarray], X: np.ndarray, country: np.ndarray) -> np.ndarray:
    """Factor-layer (last hidden layer) activations (m, u_L), mean over members."""
    return _state_forward(state, *_scaled_inputs(state, X, country))[1].mean(dim=0).numpy()
