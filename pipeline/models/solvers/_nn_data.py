"""Data side of ensemble_nn: parameters, window containers, scaling, validation blocks, init.

Shared by the batched trainer (`_batched_mlp.py`) and the per-member reference loop
(tests/ensemble_loop.py), so both see exactly the same rows, splits, seeds and initial weights.

Imports: torch, numpy and solvers/ (common, parameters, rules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from pipeline.models.solvers.common import check_choice, check_positive_int
from pipeline.models.solvers.parameters import (
    BATCH_SIZE,
    EPOCHS,
    LEARNING_RATE,
    PARALLEL_MODELS,
    PATIENCE,
    UNITS,
)
from pipeline.models.solvers.rules import check_quantiles

SCALES = ("per_country", "none")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-7  # Keras' default, as in the seed


@dataclass(frozen=True)
class NNSpec:
    """Validated hyper-parameters of one ensemble (shared by every window of a batch)."""

    quantiles: tuple[float, ...]
    units_per_layer: tuple[int, ...]
    learning_rate: float
    epochs: int
    batch_size: int
    patience: int
    parallel_models: int
    seed: int
    validation_fraction: float
    scale: str


def check_nn_params(
    *,
    quantiles: Sequence[float],
    units_per_layer: Sequence[int],
    learning_rate: float,
    epochs: int,
    batch_size: int,
    patience: int,
    parallel_models: int,
    seed: int,
    validation_fraction: float,
    scale: str,
) -> NNSpec:
    """Validate every parameter once; errors name the parameter, the rule and the value.

    The model parameters use the Rules the config declares (pipeline.models.plugins.builtin.ensemble_nn).
    """
    try:
        units = tuple(int(u) for u in UNITS.check("units_per_layer", list(units_per_layer)))
    except TypeError as exc:
        raise ValueError(
            f"units_per_layer must be a non-empty sequence of integers >= 1; got {units_per_layer!r}"
        ) from exc
    lr = float(LEARNING_RATE.check("learning_rate", learning_rate))
    vf = _finite_float("validation_fraction", validation_fraction)
    if not 0 < vf < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1); got {validation_fraction!r}")
    return NNSpec(
        quantiles=check_quantiles(quantiles),
        units_per_layer=units,
        learning_rate=lr,
        epochs=int(EPOCHS.check("epochs", epochs)),
        batch_size=int(BATCH_SIZE.check("batch_size", batch_size)),
        patience=int(PATIENCE.check("patience", patience)),
        parallel_models=int(PARALLEL_MODELS.check("parallel_models", parallel_models)),
        seed=check_positive_int("seed", seed, minimum=0),
        validation_fraction=vf,
        scale=check_choice("scale", scale, SCALES),
    )


def _finite_float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a finite number; got {value!r}") from exc
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return out


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else must parse as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA, which this machine lacks; use 'auto'")
    return resolved


@dataclass(frozen=True)
class WindowData:
    """One training window. Column 0 of X is the current value y_t (the AR regressor).

    X (n, p); y (n,) or (n, H) with NaN where y_{t+h} is not available (past the origin);
    country (n,) integer codes; X_new (c, p), country_new (c,) the rows to forecast;
    time (n,) integer month index, None = rows are in time order within each country.
    """

    X: np.ndarray
    y: np.ndarray
    country: np.ndarray
    X_new: np.ndarray
    country_new: np.ndarray
    time: np.ndarray | None = None


@dataclass
class PreparedWindow:
    """A window after row selection and scaling: what the trainers consume."""

    X: np.ndarray  # (n, p) scaled features of rows with at least one target
    Y: np.ndarray  # (n, H) scaled targets, 0 where missing
    W: np.ndarray  # (n, H) 1.0 where the target is available
    cidx: np.ndarray  # (n,) country index 0..C-1
    X_new: np.ndarray  # (c, p) scaled
    cidx_new: np.ndarray  # (c,)
    codes: np.ndarray  # (C,) original country codes
    x_loc: np.ndarray  # (C, p); y uses column 0's location and scale
    x_scale: np.ndarray  # (C, p)
    train_rows: list[np.ndarray]  # per member, sorted row indices
    val_rows: list[np.ndarray]  # per member
    multi_horizon: bool


def _within_country_rank(country: np.ndarray) -> np.ndarray:
    order = np.argsort(country, kind="stable")
    sorted_c = country[order]
    starts = np.r_[0, np.flatnonzero(sorted_c[1:] != sorted_c[:-1]) + 1]
    counts = np.diff(np.r_[starts, sorted_c.size])
    rank = np.empty(country.size, dtype=np.int64)
    rank[order] = np.arange(country.size) - np.repeat(starts, counts)
    return rank


def prepare_window(win: WindowData, spec: NNSpec) -> PreparedWindow:
    """Select rows with a target, scale per country on those rows only, split per member."""
    X = np.asarray(win.X, dtype=np.float64)
    y = np.asarray(win.y, dtype=np.float64)
    country = np.asarray(win.country)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X must have shape (n, p) with p >= 1 (column 0 = y_t); got {X.shape}")
    multi = y.ndim == 2
    Y = y if multi else y[:, None]
    if Y.ndim != 2 or Y.shape[0] != X.shape[0] or country.shape != (X.shape[0],):
        raise ValueError(
            f"y must be (n,) or (n, H) and country (n,) with n = {X.shape[0]}; "
            f"got y {y.shape}, country {country.shape}"
        )
    time = _within_country_rank(country) if win.time is None else np.asarray(win.time)
    if time.shape != country.shape:
        raise ValueError(f"time must have shape {country.shape}; got {time.shape}")
    keep = np.isfinite(Y).any(axis=1)
    if not keep.any():
        raise ValueError("y has no finite target in this window")
    X, Y, country, time = X[keep], Y[keep], country[keep], time[keep]
    if not np.isfinite(X).all():
        raise ValueError("X must be finite on every row that has a target")
    codes, cidx = np.unique(country, return_inverse=True)
    p = X.shape[1]
    loc, scale = _country_scaling(X, cidx, codes.size, spec.scale)
    avail = np.isfinite(Y)
    Ys = (Y - loc[cidx, :1]) / scale[cidx, :1]
    X_new = np.asarray(win.X_new, dtype=np.float64)
    country_new = np.asarray(win.country_new)
    if X_new.ndim != 2 or X_new.shape[1] != p or country_new.shape != (X_new.shape[0],):
        raise ValueError(
            f"X_new must be (c, {p}) and country_new (c,); got {X_new.shape}, {country_new.shape}"
        )
    cidx_new = encode_countries(codes, country_new)
    if not np.isfinite(X_new).all():
        raise ValueError("X_new must be finite")
    train_rows, val_rows = validation_blocks(time, spec.parallel_models, spec.validation_fraction)
    return PreparedWindow(
        X=(X - loc[cidx]) / scale[cidx],
        Y=np.where(avail, Ys, 0.0),
        W=avail.astype(np.float64),
        cidx=cidx,
        X_new=(X_new - loc[cidx_new]) / scale[cidx_new],
        cidx_new=cidx_new,
        codes=codes,
        x_loc=loc,
        x_scale=scale,
        train_rows=train_rows,
        val_rows=val_rows,
        multi_horizon=multi,
    )


def _country_scaling(
    X: np.ndarray, cidx: np.ndarray, n_c: int, how: str
) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale (C, p) of each country's rows of X: mean and standard deviation
    for 'per_country', 0 and 1 for 'none'."""
    p = X.shape[1]
    if how != "per_country":
        return np.zeros((n_c, p)), np.ones((n_c, p))
    counts = np.bincount(cidx, minlength=n_c).astype(np.float64)
    loc = np.stack([np.bincount(cidx, X[:, j], n_c) for j in range(p)], 1) / counts[:, None]
    dev = (X - loc[cidx]) ** 2
    var = np.stack([np.bincount(cidx, dev[:, j], n_c) for j in range(p)], 1) / counts[:, None]
    scale = np.sqrt(var)
    # a constant series keeps unit scale rather than dividing by ~0
    return loc, np.where(scale > 1e-12 * (1.0 + np.abs(loc)), scale, 1.0)


def encode_countries(codes: np.ndarray, country: np.ndarray) -> np.ndarray:
    """Index of each label in the fitted `codes`; an unseen country is an error."""
    country = np.asarray(country)
    idx = np.clip(np.searchsorted(codes, country), 0, codes.size - 1)
    unseen = codes[idx] != country
    if unseen.any():
        raise ValueError(
            f"country {country[unseen][0]!r} was not in the training window; "
            f"known: {codes.tolist()!r}"
        )
    return idx


def validation_blocks(
    time: np.ndarray, n_members: int, fraction: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Member k validates on its own contiguous block of months (all countries).

    Blocks of round(fraction * months) months are spread evenly from the first months
    (member 0) to the last ones (member M-1); a single member validates on the last months.
    Every row is inside the window, so no row after the origin is ever used.
    """
    months = np.unique(time)
    n_t = months.size
    length = max(1, round(fraction * n_t))
    if length >= n_t:
        raise ValueError(
            f"window has {n_t} distinct months: too few for validation_fraction={fraction} "
            "(need at least one month to train on)"
        )
    pos = np.searchsorted(months, time)
    train, val = [], []
    for k in range(n_members):
        start = round(k * (n_t - length) / (n_members - 1)) if n_members > 1 else n_t - length
        in_val = (pos >= start) & (pos < start + length)
        train.append(np.flatnonzero(~in_val))
        val.append(np.flatnonzero(in_val))
    return train, val


def member_seed(seed: int, member: int) -> int:
    """Seed of member `member`'s generator: depends on (seed, member) only, not on batching."""
    return int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


def init_member(
    gen: torch.Generator,
    n_features: int,
    units: Sequence[int],
    n_out: int,
    n_countries: int,
    H: int,
) -> list[torch.Tensor]:
    """Glorot-uniform weights (Keras default), zero biases and zero AR terms, float64 on CPU.

    Order: W_0..W_{L-1} (in, out), W_head, b_0..b_{L-1} (1, out), b_head, AR (2, C, H)
    where AR[0] is the intercept a_c and AR[1] the slope phi_c on y_t.
    Only the weight matrices draw random numbers, so the draws do not depend on C.
    """
    sizes = [n_features, *units, n_out]
    weights, biases = [], []
    for fan_in, fan_out in pairwise(sizes):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        u = torch.rand((fan_in, fan_out), generator=gen, dtype=torch.float64)
        weights.append((2.0 * u - 1.0) * limit)
        biases.append(torch.zeros((1, fan_out), dtype=torch.float64))
    return [*weights, *biases, torch.zeros((2, n_countries, H), dtype=torch.float64)]
