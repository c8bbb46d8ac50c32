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

__all__ = [
    "WindowData",
    "WindowResult",
    "factors_state",
    "fit_predict_ensemble_windows",
    "predict_state",
]

_DEFAULTS = dict(
    units_per_layer=(32, 32, 32, 32, 32),
    learning_rate=5e-5,
    epochs=1500,
    batch_size=32,
    patience=50,
    parallel_models=10,
    quantiles=(0.1, 0.5, 0.9),
    seed=0,
    scale="per_country",
    validation_fraction=0.2,
)


def fit_predict_ensemble_windows(
    windows: Sequence[WindowData],
    *,
    units_per_layer: Sequence[int] = _DEFAULTS["units_per_layer"],  # type: ignore[assignment]
    learning_rate: float = 5e-5,
    epochs: int = 1500,
    batch_size: int = 32,
    patience: int = 50,
    parallel_models: int = 10,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    seed: int = 0,
    device: str | torch.device = "auto",
    scale: str = "per_country",
    validation_fraction: float = 0.2,
) -> list[WindowResult]:
    """Train G windows x `parallel_models` members as one batched network; forecast each.

    Each window has its own rows (ragged sizes are padded and masked) and its own members, so
    its result does not depend on which other windows share the batch, up to floating-point
    rounding: in float32 the batch shape changes rounding, and early stopping can amplify it,
    which is why the runtime fixes each window's batch-mates (pipeline.runtime.fits.fit_groups batch blocks). Returns one
    `WindowResult` per window: pred (c, H, Q) (or (c, Q) for 1-D y), epochs (M,), state.
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
    return train_predict_windows(windows, spec, resolve_device(device))
