"""Random Fourier features (RFF) of the penalized linear model `lqr`.

phi(x~) = [x~, sqrt(2/D) cos(x~ W / bw + b)] on standardized features x~: the linear part
plus D seeded random features whose inner products approximate the RBF kernel
exp(-|x - x'|^2 / (2 bw^2)) (Rahimi & Recht, 2007), W ~ N(0, 1), b ~ U(0, 2 pi).

Imports: numpy and torch only.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_ROWS = 64  # rows of RFF features computed per block: 64 x 1000 float64 = 0.5 MB


def rff_weights(d: int, rff_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded RFF frequencies W (d, D) ~ N(0, 1) and phases b (D,) ~ U(0, 2 pi)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, rff_features)), rng.uniform(0.0, 2.0 * np.pi, rff_features)


def lqr_features(
    Xs: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    bw: torch.Tensor,
    penalize_first_lag: bool,
    act: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penalized features phi (B, r, P) and unpenalized columns U (B, r, k) of standardized X.

    U is the intercept column, plus the first lag x~_1 when `penalize_first_lag` is False
    (then phi drops x~_1 from its linear part); D = 0 gives the linear model only. `act`
    (B, r): rows outside it get zero features (padding)."""
    ones = torch.ones(*Xs.shape[:-1], 1, dtype=Xs.dtype)
    lin = Xs if penalize_first_lag else Xs[..., 1:]
    U = ones if penalize_first_lag else torch.cat([ones, Xs[..., :1]], -1)
    p, D = lin.shape[-1], W.shape[1]
    phi = torch.empty(*lin.shape[:-1], p + D, dtype=Xs.dtype)
    phi[..., :p] = lin
    if D:
        rff = phi[..., p:]
        # sqrt(2/D) cos(x W / bw + b), a few problems (BLOCK_ROWS rows) at a time: the block
        # stays in the cache through the d + 4 passes (2.7x faster than whole-batch passes)
        step = max(1, BLOCK_ROWS // max(1, Xs.shape[1]))
        tmp = torch.empty(min(step, Xs.shape[0]), Xs.shape[1], D, dtype=Xs.dtype)
        scale = float(np.sqrt(2.0 / D))
        for i in range(0, Xs.shape[0], step):
            out, x = rff[i : i + step], Xs[i : i + step]
            rowwise_matmul(x, W, out=out, tmp=tmp[: x.shape[0]])
            out.div_(bw[i : i + step, None, None]).add_(b).cos_().mul_(scale)
    if act is not None:
        phi.mul_(act[..., None])
        U = U * act[..., None]
    return phi, U


def rowwise_matmul(
    X: torch.Tensor,
    W: torch.Tensor,
    out: torch.Tensor | None = None,
    tmp: torch.Tensor | None = None,
) -> torch.Tensor:
    """X (..., d) @ W (d, D), summed over d in a fixed order, one multiply-add per column
    (into `out` if given, with `tmp` of the same shape as scratch).

    A BLAS GEMM picks its kernel by the number of rows, so a row of `X @ W` can differ in the
    last bit with the batch it sits in; this form gives every row the same bits in any batch
    (one key, one result), at the cost of d elementwise passes (d is a dozen lags here).
    """
    out = torch.mul(X[..., 0, None], W[0], out=out)
    term = torch.empty_like(out) if tmp is None else tmp
    for j in range(1, X.shape[-1]):
        # the same product and sum as out + X_j W_j, in place (no temporaries: 2x faster)
        out.add_(torch.mul(X[..., j, None], W[j], out=term))
    return out


def median_bandwidth(Xs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Median pairwise distance of the active training rows (1 where undefined or zero)."""
    dist = torch.cdist(Xs, Xs)
    n = Xs.shape[1]
    pair = act[:, :, None] & act[:, None, :] & torch.ones(n, n, dtype=torch.bool).triu(1)
    med = torch.where(pair, dist, torch.nan).flatten(1).nanmedian(-1).values
    return torch.where(torch.isfinite(med) & (med > 0), med, torch.ones_like(med))
