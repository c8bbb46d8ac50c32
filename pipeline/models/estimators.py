"""The public estimators (scikit-learn API) over the batch kernels the runtime runs.

Each predicts every quantile level at once: `predict(X)` returns (m, Q), sorted along Q.
Otherwise scikit-learn's contract holds: keyword-only parameters stored unchanged by
`__init__` and validated in `fit`, `get_params`/`set_params`/`clone` from BaseEstimator,
`n_features_in_` set by `fit`, and `predict` changes nothing. `score` is the negative mean
pinball loss over the quantiles, so GridSearchCV picks the best forecaster by default.

The kernels (pipeline.models.solvers.ar_qr, lqr, benchmarks, ensemble_nn) do not import this module,
so the runtime and its workers never load scikit-learn. EnsembleNN: pipeline.models.estimator_nn.

Imports: solvers/ (the kernels), pipeline.io and scikit-learn; never plugins/ or the config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Self

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from pipeline.io import read_npz, write_npz
from pipeline.models.solvers.ar_qr import with_intercept
from pipeline.models.solvers.benchmarks import masked, nan_quantiles
from pipeline.models.solvers.common import crossing_rate_batch, rearrange_quantiles
from pipeline.models.solvers.lqr import check_lqr_params, fit_predict_lqr_batch, predict_lqr_state
from pipeline.models.solvers.parameters import AR_QR_DEFAULTS, LQR_DEFAULTS, QUANTILES, P
from pipeline.models.solvers.quantile_linear import fit_quantile_lp
from pipeline.models.solvers.rules import check_quantiles


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
    """Base of pipeline.ARQR, LQR, EnsembleNN, RandomWalk, Climatology (module docstring)."""

    quantiles: Sequence[float]

    def score(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
        """Negative mean pinball loss of `predict(X)` (higher is better; replaces R^2)."""
        return -mean_pinball(y, self.predict(X), self.quantiles, sample_weight)

    def _fitted_input(self, X: np.ndarray) -> np.ndarray:
        """X as float64 (m, n_features_in_) for a fitted estimator (what `predict` starts with)."""
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float64, reset=False)


class _NpzFile:
    """`save`/`load` of an estimator whose `to_arrays()` / `from_arrays(d)` hold it whole:
    one atomic .npz of plain arrays, no pickle."""

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomic .npz write (no pickle)."""
        write_npz(path, self.to_arrays())  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Rebuild a fitted estimator from a `save()` file."""
        return cls.from_arrays(read_npz(path))  # type: ignore[attr-defined]


class ARQR(_NpzFile, QuantileEstimator):
    """Autoregressive quantile regression, a scikit-learn estimator (one problem; batch core B = 1).

    `fit(X, y)` takes X (n, d) = lags y_t, y_{t-1}, ... (d >= p; the first p columns are the
    regressors, so one lag matrix serves a grid over p) and y (n,); `predict(X)` returns (m, Q)
    non-decreasing along Q. Fitted: `coef_` (Q, p + 1) intercept first, `n_features_in_`.
    """

    def __init__(
        self, *, p: int = AR_QR_DEFAULTS["p"], quantiles: Sequence[float] = QUANTILES
    ) -> None:
        self.p = p
        self.quantiles = quantiles

    def _check(self) -> tuple[int, tuple[float, ...]]:
        return int(P.check("p", self.p)), check_quantiles(self.quantiles)

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> ARQR:
        """Fit all quantiles on (X (n, d >= p), y (n,)); optional row weights (n,)."""
        p, qs = self._check()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        if X.shape[1] < p:
            raise ValueError(f"X must have at least p={p} lag columns; got {X.shape[1]}")
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X)[None]
        self.coef_ = fit_quantile_lp(with_intercept(X[:, :p])[None], y[None], qs, w)[0]
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        X = self._fitted_input(X)
        return with_intercept(X[:, : self.coef_.shape[1] - 1]) @ self.coef_.T

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Quantile forecasts (m, Q), rearranged so they never cross."""
        return rearrange_quantiles(self._raw(X))

    def crossing_rate(self, X: np.ndarray) -> float:
        """Fraction of the rows of X whose raw quantiles cross (before `predict` sorts them)."""
        return float(crossing_rate_batch(self._raw(X)[None])[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (for a safe .npz)."""
        check_is_fitted(self)
        return {
            "p": np.asarray(self.p),
            "quantiles": np.asarray(self.quantiles, dtype=np.float64),
            "coef_": np.asarray(self.coef_),
            "n_features_in_": np.asarray(self.n_features_in_),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> ARQR:
        """Rebuild a fitted estimator from `to_arrays()` output."""
        model = cls(p=int(d["p"]), quantiles=tuple(float(q) for q in d["quantiles"]))
        model._check()
        model.coef_ = np.asarray(d["coef_"], dtype=np.float64)
        model.n_features_in_ = int(d["n_features_in_"]) if "n_features_in_" in d else model.p
        return model


class LQR(_NpzFile, QuantileEstimator):
    """Penalized (RFF) linear quantile regression, a scikit-learn estimator; batch core B = 1.

    `fit(X, y)` takes X (n, d) features in time order (first column y_t) and y (n,);
    `predict(X)` returns (m, Q) non-decreasing along Q. Fitted: `alpha_` (Q,) the chosen
    penalties, `state_` (arrays of the fit), `n_features_in_`.
    """

    def __init__(
        self,
        *,
        quantiles: Sequence[float] = QUANTILES,
        alphas: Sequence[float] = LQR_DEFAULTS["alphas"],
        solver: str = LQR_DEFAULTS["solver"],
        rff_features: int = LQR_DEFAULTS["rff_features"],
        rff_bandwidth: str | float = LQR_DEFAULTS["rff_bandwidth"],
        validation_size: int = LQR_DEFAULTS["validation_size"],
        penalize_first_lag: bool = LQR_DEFAULTS["penalize_first_lag"],
        seed: int = LQR_DEFAULTS["seed"],
    ) -> None:
        self.quantiles = quantiles
        self.alphas = alphas
        self.solver = solver
        self.rff_features = rff_features
        self.rff_bandwidth = rff_bandwidth
        self.validation_size = validation_size
        self.penalize_first_lag = penalize_first_lag
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> LQR:
        """Choose alpha per quantile by time-ordered validation, then fit on all rows."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X)[None]
        res = fit_predict_lqr_batch(X[None], y[None], X[None, :0], w=w, **self.get_params())
        self.state_ = {k: v[0] for k, v in res.state.items()}
        self.alpha_ = res.alpha[0]
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        X = self._fitted_input(X)
        return predict_lqr_state(
            {k: v[None] for k, v in self.state_.items()},
            X[None],
            rff_features=self.rff_features,
            penalize_first_lag=self.penalize_first_lag,
            seed=self.seed,
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Quantile forecasts (m, Q), rearranged so they never cross."""
        return rearrange_quantiles(self._raw(X)[0])

    def crossing_rate(self, X: np.ndarray) -> float:
        """Fraction of the rows of X whose raw quantiles cross (before `predict` sorts them)."""
        return float(crossing_rate_batch(self._raw(X))[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (for a safe .npz)."""
        check_is_fitted(self)
        bw = self.rff_bandwidth
        d = {
            "quantiles": np.asarray(self.quantiles, dtype=np.float64),
            "alphas": np.asarray(self.alphas, dtype=np.float64),
            "solver": np.asarray(self.solver),
            "rff_features": np.asarray(self.rff_features),
            "rff_bandwidth": np.asarray(-1.0 if bw == "median" else float(bw)),
            "validation_size": np.asarray(self.validation_size),
            "penalize_first_lag": np.asarray(bool(self.penalize_first_lag)),
            "seed": np.asarray(self.seed),
            "n_features_in_": np.asarray(self.n_features_in_),
        }
        d.update({f"state_{k}": v for k, v in self.state_.items()})
        return d

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> LQR:
        """Rebuild a fitted estimator from `to_arrays()` output."""
        bw = float(d["rff_bandwidth"])
        model = cls(
            quantiles=tuple(float(q) for q in d["quantiles"]),
            alphas=tuple(float(a) for a in d["alphas"]),
            solver=str(d["solver"]),
            rff_features=int(d["rff_features"]),
            rff_bandwidth="median" if bw < 0 else bw,
            validation_size=int(d["validation_size"]),
            penalize_first_lag=bool(d["penalize_first_lag"]),
            seed=int(d["seed"]),
        )
        check_lqr_params(
            model.quantiles,
            model.alphas,
            model.solver,
            model.rff_features,
            model.rff_bandwidth,
            model.validation_size,
        )
        model.n_features_in_ = int(d["n_features_in_"])
        model.state_ = {k[6:]: np.asarray(v) for k, v in d.items() if k.startswith("state_")}
        model.alpha_ = model.state_["alpha"]
        return model


class _Benchmark(_NpzFile, QuantileEstimator):
    """A parameter-free benchmark as a scikit-learn estimator: the batch kernel with B = 1.

    `fit(X, y)` takes X (n, d) with column 0 = y_t and y (n,) the target y_{t+h} (optional
    row weights: 0 leaves a row out); `predict(X)` returns (m, Q). Fitted: `quantiles_` (Q,),
    `n_features_in_`.
    """

    def __init__(self, *, quantiles: Sequence[float] = QUANTILES) -> None:
        self.quantiles = quantiles

    def _values(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(
        self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> _Benchmark:
        qs = check_quantiles(self.quantiles)
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        w = _check_sample_weight(sample_weight, X)
        self.quantiles_ = nan_quantiles(masked(self._values(X, y), w)[None], qs)[0]  # (Q,)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and fitted state as plain arrays (for a safe .npz)."""
        check_is_fitted(self)
        return {
            "quantiles": np.asarray(self.quantiles, dtype=np.float64),
            "quantiles_": np.asarray(self.quantiles_, dtype=np.float64),
            "n_features_in_": np.asarray(self.n_features_in_),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> Self:
        """Rebuild a fitted estimator from `to_arrays()` output."""
        model = cls(quantiles=check_quantiles(tuple(float(q) for q in d["quantiles"])))
        model.quantiles_ = np.asarray(d["quantiles_"], dtype=np.float64)
        model.n_features_in_ = int(d["n_features_in_"])
        return model


class RandomWalk(_Benchmark):
    """`rw`: q_T = y_T + Q_tau({y_{t+h} - y_t}); `quantiles_` are the change quantiles (Q,)."""

    def _values(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y - X[:, 0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(m, Q): each row's y_t (column 0) plus the quantiles of the h-month changes."""
        X = self._fitted_input(X)
        return X[:, :1] + self.quantiles_[None, :]


class Climatology(_Benchmark):
    """`climatology`: q_T = Q_tau({y_{t+h}}), the same for every row; `quantiles_` (Q,)."""

    def _values(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(m, Q): the training targets' quantiles on every row."""
        X = self._fitted_input(X)
        return np.repeat(self.quantiles_[None, :], X.shape[0], axis=0)
