"""`ensemble_nn`: the factor neural-network ensemble, trained as one batched network.

A panel model: one network per training window, pooled over all countries. For country c,
every quantile of y_{t+h} is a shared MLP trunk of the features (its last hidden layer is
the factor layer) plus a country AR term a_c + phi_c * y_t (y_t = column 0 of X). All
quantiles (and all horizons, when y has one column per horizon) come out of one head,
non-crossing by construction: the lowest quantile plus cumulative softplus increments.
`parallel_models` members, each with its own seed, validation block, early stopping and
best weights, train together as stacked weights (batched matmuls); the forecast is the
mean of the members' quantiles, sorted.

Horizons share one head (one network per origin, H*Q outputs; a row's target for h is
masked out of the loss where t + h lies past the origin). That trains a quarter of the
networks of a per-horizon design on the seed grid, and rows, features and the trunk are
the same for every horizon anyway. Pass y with one column to get one network per horizon.

Several windows (origins) can be trained as one batched network with
`fit_predict_ensemble_windows`; `EnsembleNN.fit` (pipeline.models.estimator_nn) is that
code path with a single window.

Imports: torch and the `_batched_mlp` / `_nn_data` modules behind it, parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.models.solvers._batched_mlp import (
    WindowResult,
    factors_state,
    predict_state,
    train_predict_windows,
)
from pipeline.models.solvers._nn_data import WindowData, check_nn_params, resolve_device
from pipeline.models.solvers.parameters import NN_DEFAULTS, QUANTILES

__all__ = [
    "WindowData",
    "WindowResult",
    "factors_state",
    "fit_predict_ensemble_windows",
    "predict_state",
]


def fit_predict_ensemble_windows(
    windows: Sequence[WindowData],
    *,
    units_per_layer: Sequence[int] = NN_DEFAULTS["units_per_layer"],
    learning_rate: float = NN_DEFAULTS["learning_rate"],
    epochs: int = NN_DEFAULTS["epochs"],
    batch_size: int = NN_DEFAULTS["batch_size"],
    patience: int = NN_DEFAULTS["patience"],
    parallel_models: int = NN_DEFAULTS["parallel_models"],
    quantiles: Sequence[float] = QUANTILES,
    seed: int = NN_DEFAULTS["seed"],
    device: str | torch.device = NN_DEFAULTS["device"],
    scale: str = NN_DEFAULTS["scale"],
    validation_fraction: float = NN_DEFAULTS["validation_fraction"],
    backend: str = "auto",
) -> list[WindowResult]:
    """Train G windows x `parallel_models` members as one batched network; forecast each.

    Each window has its own rows (ragged sizes are padded and masked) and its own members, so
    its result does not depend on which other windows share the batch, up to floating-point
    rounding: in float32 the batch shape changes rounding, and early stopping can amplify it,
    which is why the runtime fixes each window's batch-mates (pipeline.runtime.fits.fit_groups batch blocks). Returns one
    `WindowResult` per window: pred (c, H, Q) (or (c, Q) for 1-D y), epochs (M,), state.
    backend: 'auto' (the native kernel for float32 on a CPU where it is built, else torch),
    'native' or 'torch' (`_batched_mlp.resolve_backend`).
    """
    spec = check_nn_params(
        quantiles=quantiles,
        units_per_layer=units_per_layer,
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        parallel_models=parallel_models,
        seed=seed,
        validation_fraction=validation_fraction,
        scale=scale,
    )
    return train_predict_windows(windows, spec, resolve_device(device), backend=backend)
