"""Quantile regression forests as a pipeline user model (estimator contract, docs/MODELS.md).

`quantile_forest.RandomForestQuantileRegressor` (Meinshausen 2006; the method Lenza,
Moutachaker & Paredes (2025) apply to euro-area inflation) wrapped in the estimator contract:
`QuantileForest(quantiles, **params)`, `fit(X, y) -> self`, `predict(X) -> (m, len(quantiles))`.
Every keyword goes to the forest (n_estimators, min_samples_leaf, max_features, random_state,
...). It has no to_arrays(): a fitted forest is not a handful of arrays, so the fit cache keeps
its forecasts only. Enabled from config alone (conf/experiment/seed_qrf.yaml):

    models:
      qrf: {_target_: qrf_model.QuantileForest, python_path: examples/qrf, version: 1, ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from quantile_forest import RandomForestQuantileRegressor


class QuantileForest:
    def __init__(self, quantiles: Sequence[float], **params: Any) -> None:
        self.quantiles = [float(q) for q in quantiles]
        self.forest = RandomForestQuantileRegressor(**{"n_jobs": 1, **params})

    def fit(self, X: np.ndarray, y: np.ndarray) -> QuantileForest:
        self.forest.fit(np.asarray(X), np.asarray(y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        pred = self.forest.predict(np.asarray(X), quantiles=self.quantiles)
        return np.asarray(pred, dtype=np.float64).reshape(len(X), len(self.quantiles))
