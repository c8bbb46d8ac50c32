"""`ensemble_nn`: factor neural-network ensemble, a pooled MLP trunk + per-country AR term.

The kernel is pipeline.models.solvers.ensemble_nn (members of many windows trained as one batch).

Imports: plugins.spec, solvers/ (parameters and rules; the trainer, torch and the native
kernel inside functions); the config for types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.models.plugins.spec import Adapter, lag_features
from pipeline.models.solvers.parameters import (
    BATCH_SIZE,
    BLOCK_ORIGINS,
    EPOCHS,
    LEARNING_RATE,
    PARALLEL_MODELS,
    PATIENCE,
    UNITS,
)
from pipeline.models.solvers.rules import declared, rule

if TYPE_CHECKING:
    from pipeline.config.study import StudyConfig


@dataclass(frozen=True)
class EnsembleNNConfig:
    enabled: bool
    units_per_layer: tuple[int, ...] = field(metadata=declared(UNITS))
    learning_rate: float = field(metadata=declared(LEARNING_RATE))
    epochs: int = field(metadata=declared(EPOCHS))
    batch_size: int = field(metadata=declared(BATCH_SIZE))
    patience: int = field(metadata=declared(PATIENCE))
    parallel_models: int = field(metadata=declared(PARALLEL_MODELS))
    device: str = field(
        metadata=rule(
            lambda v: v in ("auto", "cpu") or v.startswith("cuda"), "'auto', 'cpu' or 'cuda[:N]'"
        )
    )
    block_origins: int = field(metadata=declared(BLOCK_ORIGINS))


def _params(config: StudyConfig) -> dict[str, Any]:
    m = config.models.ensemble_nn
    return {
        "units_per_layer": list(m.units_per_layer),
        "learning_rate": m.learning_rate,
        "epochs": m.epochs,
        "batch_size": m.batch_size,
        "patience": m.patience,
        "parallel_models": m.parallel_models,
        # the origins trained as one batched network: a fit's bits follow its block (its
        # block mates enter the key too, pipeline.runtime.fits.fit_groups)
        "block_origins": m.block_origins,
        "scale": config.data.scale,
        "lags": list(config.data.lags),
        # the device enters the key: CUDA and CPU kernels round differently (one key, one
        # result); "auto" is resolved here, on the driver, so the key names what ran
        "device": resolve_device(m.device),
        # the native kernel and torch's step round differently too: the key names the backend
        "backend": key_backend(resolve_device(m.device)),
    }


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; explicit devices stay as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def key_backend(device: str) -> str:
    """The backend a fit's key names, decided on the driver: 'native' (the fused C kernel) on a
    CPU where it is built, else 'torch' (what `_batched_mlp.resolve_backend` picks for 'auto'
    in float32, the plugin's dtype). A worker without the kernel fails such a fit rather than
    return torch's bits under its key."""
    from pipeline.models.solvers.native import available

    return "native" if device == "cpu" and available() else "torch"


def _fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.solvers.ensemble_nn import WindowData, fit_predict_ensemble_windows

    d, p = payload["data"], payload["params"]
    rows = np.asarray(payload["rows"], dtype=bool)
    B, C = rows.shape
    H, Q = len(payload["horizons"]), len(payload["quantiles"])
    windows, new_rows = [], []
    for b in range(B):
        ci, ti = np.nonzero(d["w"][b] > 0)  # complete rows of every country, in time order
        new = np.nonzero(rows[b])[0]
        new_rows.append(new)
        windows.append(
            WindowData(
                X=d["X"][b][ci, ti],
                y=d["y"][b][ci, ti],
                country=ci,
                X_new=d["X_new"][b][new],
                country_new=new,
                time=ti,
            )
        )
    results = fit_predict_ensemble_windows(
        windows,
        units_per_layer=p["units_per_layer"],
        learning_rate=p["learning_rate"],
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        patience=p["patience"],
        parallel_models=p["parallel_models"],
        quantiles=payload["quantiles"],
        seed=payload["seed"],
        device=p.get("device", "auto"),
        scale=p["scale"],
        backend=p.get("backend", "auto"),
    )
    pred = np.full((B, C, H, Q), np.nan)
    states = []
    for b, res in enumerate(results):
        pred[b, new_rows[b]] = np.asarray(res.pred).reshape(len(new_rows[b]), H, Q)
        states.append({**res.state, "epochs": res.epochs})
    return {"pred": pred, "states": states}


# `block_origins` (conf/models/ensemble_nn/default.yaml): origins one task trains as one
# batched network, taken round-robin from the study's origins (pipeline.runtime.fits.fit_groups).
# Members of a window stop at different epochs; batching windows fills the steps where few
# members are still training (CPU s per window: benchmarks/README.md "ensemble_nn").
PROBE_EPOCHS = 3
# Early stopping: a batch's cost tracks its member-epochs (stopped members leave the batch), so
# the probe's all-members epochs are scaled to the mean epochs a member runs, in units of
# `patience`: 2.9 x patience on the seed (member epochs median 122, mean 145, max 875 with
# patience 50 and 1500 allowed; seed run of issue 8), not `epochs`, which overestimated ~10x.
EARLY_STOP_PATIENCES = 3.0


def _probe(params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Probe with PROBE_EPOCHS epochs (no early stop) and scale the time per fit to the
    epochs a member really runs with early stopping (EARLY_STOP_PATIENCES x patience, at most
    `epochs`)."""
    epochs = min(int(params["epochs"]), PROBE_EPOCHS)
    expected = min(float(params["epochs"]), EARLY_STOP_PATIENCES * float(params["patience"]))
    return {**params, "epochs": epochs}, max(expected, epochs) / epochs


CONFIG = EnsembleNNConfig
ADAPTER = Adapter(
    name="ensemble_nn",
    # 2: hand-written gradients (issue 19); 3: transposed head, reused buffers; 4: the AR term
    # gathered (not a one-hot matmul), subnormals flushed while training; 5: the step and Adam
    # per chunk of members (Adam's last bits of some head biases), rows laid out per epoch;
    # 6: the native kernel on CPU (its own rounding; the backend enters the key)
    version=6,
    pooled=True,
    params=_params,
    features=lambda c: lag_features(c, [0, *c.data.lags]),
    min_rows=lambda c: 12,
    fit_batch=_fit,
    probe_params=_probe,
    block_fits=lambda c: c.models.ensemble_nn.block_origins,
    config_type=EnsembleNNConfig,
    rank=2,
)
