"""EnsembleNN: the factor neural-network ensemble as a scikit-learn estimator.

One window (all countries pooled) trained by the batched trainer of
`pipeline.models.solvers.ensemble_nn` (see its docstring for the model); the runtime calls that
trainer directly, so its workers never load scikit-learn.

Imports: estimators.py (the base class), solvers/ (the trainer), pipeline.io, scikit-learn
and torch; never plugins/ or the config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from pipeline.io import atomic_path
from pipeline.models.estimators import QuantileEstimator, mean_pinball
from pipeline.models.solvers._nn_data import NNSpec, check_nn_params
from pipeline.models.solvers.ensemble_nn import (
    WindowData,
    factors_state,
    fit_predict_ensemble_windows,
    predict_state,
)
from pipeline.models.solvers.parameters import NN_DEFAULTS, QUANTILES


class EnsembleNN(QuantileEstimator):
    """Factor neural-network ensemble, a scikit-learn estimator (see the module docstring).

    `fit(X, y, country=None, time=None)`: X (n, p) with column 0 = y_t, y (n,) or (n, H) with
    NaN where a target is not available, country (n,) labels (None: one series), time (n,)
    month index (None = rows are in time order within each country). `predict(X, country=None)`
    returns (m, Q), or (m, H, Q) when y had H columns. Fitted: `state_` (arrays that define
    the ensemble), `countries_`, `epochs_` (M,) epochs each member trained, `best_epoch_`,
    `val_loss_`, `n_features_in_`.
    """

    def __init__(
        self,
        *,
        units_per_layer: Sequence[int] = NN_DEFAULTS["units_per_layer"],
        learning_rate: float = NN_DEFAULTS["learning_rate"],
        epochs: int = NN_DEFAULTS["epochs"],
        batch_size: int = NN_DEFAULTS["batch_size"],
        patience: int = NN_DEFAULTS["patience"],
        parallel_models: int = NN_DEFAULTS["parallel_models"],
        quantiles: Sequence[float] = QUANTILES,
        seed: int = NN_DEFAULTS["seed"],
        device: str = NN_DEFAULTS["device"],
        scale: str = NN_DEFAULTS["scale"],
        validation_fraction: float = NN_DEFAULTS["validation_fraction"],
    ):
        self.units_per_layer = units_per_layer
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.parallel_models = parallel_models
        self.quantiles = quantiles
        self.seed = seed
        self.device = device
        self.scale = scale
        self.validation_fraction = validation_fraction

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # y (n, H): one column per horizon
        return tags

    def _spec(self) -> NNSpec:
        """The validated hyper-parameters: every parameter but `device` (the trainer's, and
        checked where it is resolved)."""
        params = self.get_params()
        del params["device"]
        return check_nn_params(**params)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        country: np.ndarray | None = None,
        time: np.ndarray | None = None,
    ) -> EnsembleNN:
        """Train the ensemble on one window (all countries pooled); returns self."""
        self._spec()  # a bad parameter fails before the data are looked at
        if y is None:  # scikit-learn's wording (its estimator checks look for it)
            raise ValueError("EnsembleNN requires y to be passed, but the target y is None")
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        y = np.asarray(y, dtype=np.float64)  # NaN marks a target that is not available
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        country = _countries(country, X.shape[0])
        check_consistent_length(X, y, country)
        window = WindowData(
            X=X,
            y=y,
            country=country,
            X_new=np.zeros((0, X.shape[1])),
            country_new=country[:0],
            time=None if time is None else np.asarray(time),
        )
        (result,) = fit_predict_ensemble_windows([window], **self.get_params())
        self._set_state(result.state)
        return self

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.state_ = state
        self.countries_ = state["codes"]
        self.epochs_ = state["epochs_trained"]
        self.best_epoch_ = state["best_epoch"]
        self.val_loss_ = state["val_loss"]

    def _check_fitted(self) -> None:
        check_is_fitted(self, "state_")

    def predict(self, X: np.ndarray, country: np.ndarray | None = None) -> np.ndarray:
        """Quantile forecasts in original units: (m, Q), or (m, H, Q) for multi-horizon y.

        `country` may be left out when the model was fitted on one series.
        """
        X = self._fitted_input(X)
        if country is None:
            if len(self.countries_) != 1:
                raise ValueError(
                    f"predict(X, country) needs country: the model was fitted on "
                    f"{len(self.countries_)} countries"
                )
            country = np.repeat(self.countries_[:1], X.shape[0])
        return predict_state(self.state_, X, np.asarray(country))

    def score(
        self,
        X: np.ndarray,
        y: np.ndarray,
        country: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> float:
        """Negative mean pinball loss of `predict(X, country)` for 1-D y (higher is better)."""
        return -mean_pinball(y, self.predict(X, country), self.quantiles, sample_weight)

    def factors(self, X: np.ndarray, country: np.ndarray | None = None) -> np.ndarray:
        """Factor-layer activations (m, units_per_layer[-1]), mean over members.

        With per-country scaling the inputs are standardized per country first, so
        `country` is required then; with scale='none' it is not used.
        """
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        if country is None:
            if self.scale != "none":
                raise ValueError("factors(X, country) needs country when scale='per_country'")
            country = np.repeat(self.countries_[:1], X.shape[0])
        return factors_state(self.state_, X, country)

    # ---- persistence: plain arrays only (npz or torch.load(weights_only=True)) ----

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (safe for .npz, no pickle)."""
        self._check_fitted()
        spec = self._spec()
        d = {
            "units_per_layer": np.asarray(spec.units_per_layer, dtype=np.int64),
            "learning_rate": np.asarray(spec.learning_rate),
            "epochs": np.asarray(spec.epochs),
            "batch_size": np.asarray(spec.batch_size),
            "patience": np.asarray(spec.patience),
            "parallel_models": np.asarray(spec.parallel_models),
            "quantiles": np.asarray(spec.quantiles, dtype=np.float64),
            "seed": np.asarray(spec.seed),
            "device": np.asarray(str(self.device)),
            "scale": np.asarray(spec.scale),
            "validation_fraction": np.asarray(spec.validation_fraction),
        }
        d.update({f"state_{k}": np.asarray(v) for k, v in self.state_.items()})
        return d

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> EnsembleNN:
        """Rebuild a fitted estimator from `to_arrays()` output."""
        model = cls(
            units_per_layer=tuple(int(u) for u in d["units_per_layer"]),
            learning_rate=float(d["learning_rate"]),
            epochs=int(d["epochs"]),
            batch_size=int(d["batch_size"]),
            patience=int(d["patience"]),
            parallel_models=int(d["parallel_models"]),
            quantiles=tuple(float(q) for q in d["quantiles"]),
            seed=int(d["seed"]),
            device=str(d["device"]),
            scale=str(d["scale"]),
            validation_fraction=float(d["validation_fraction"]),
        )
        model._spec()  # a tampered file fails here, with the parameter named
        model._set_state({k[6:]: np.asarray(v) for k, v in d.items() if k.startswith("state_")})
        model.n_features_in_ = int(model.state_["x_loc"].shape[1])  # p: the features' count
        return model

    def save(self, path: str | os.PathLike[str]) -> None:
        """torch.save of plain tensors (numbers) and lists (labels, text); atomic write."""
        payload: dict[str, object] = {}
        for key, value in self.to_arrays().items():
            if value.dtype.kind in "US":  # text: country labels, scale, device
                payload[key] = value.tolist()
            else:
                payload[key] = torch.as_tensor(np.array(value))  # keeps 0-d arrays 0-d
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EnsembleNN:
        """Load a `save()` file with torch.load(weights_only=True): nothing is executed."""
        payload = torch.load(path, weights_only=True, map_location="cpu")
        arrays = {
            k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            for k, v in payload.items()
        }
        return cls.from_arrays(arrays)


def _countries(country: np.ndarray | None, n: int) -> np.ndarray:
    """The rows' country labels; None: every row is one series."""
    if country is None:
        return np.zeros(n, dtype=np.int64)
    return np.asarray(country)
