"""What the exported estimators share as scikit-learn estimators (multi-quantile regressors).

Each estimator predicts every quantile level at once: `predict(X)` returns (m, Q), sorted
along Q. scikit-learn's own contract otherwise holds: keyword-only parameters stored unchanged
by `__init__` and validated in `fit`, `get_params`/`set_params`/`clone` from BaseEstimator,
`n_features_in_` set by `fit`, and `predict` changes nothing. `score` is the negative mean
pinball loss over the quantiles, so GridSearchCV picks the best forecaster by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


def mean_pinball(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    quantiles: Sequence[float],
    sample_weight: np.ndarray | None = None,
) -> float:
    """Mean pinball loss of (m, Q) quantile forecasts of y_true (m,), averaged over Q.

    For `sklearn.metrics.make_scorer(mean_pinball, greater_is_better=False, quantiles=qs)`.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(-1, 1)
    pred = np.asarray(y_pred, dtype=np.float64).reshape(y.shape[0], -1)
    tau = np.asarray(quantiles, dtype=np.float64)[None, :]
    diff = y - pred
    loss = np.maximum(tau * diff, (tau - 1.0) * diff).mean(axis=1)
    return float(np.average(loss, weights=sample_weight))


class QuantileEstimator(RegressorMixin, BaseEstimator):
    """Base of pipeline.ARQR, LQR, EnsembleNN, RandomWalk, Climatology (see module docstring)."""

    quantiles: Sequence[float]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"
        tags.target_tags.required = True
        return tags

    def score(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
        """Negative mean pinball loss of `predict(X)` (higher is better; replaces R^2)."""
        return -mean_pinball(y, self.predict(X), self.quantiles, sample_weight)
