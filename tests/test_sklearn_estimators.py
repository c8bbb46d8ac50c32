"""The exported estimators are scikit-learn estimators: clone, get/set_params, keyword-only
parameters validated in fit, a predict that changes nothing, GridSearchCV over time-ordered
splits with a pinball scorer, and scikit-learn's own estimator checks (each check that cannot
apply to a multi-quantile forecaster is listed with its reason). Their forecasts are the batch
kernels' (what the runtime runs), so the refactor changed no forecast."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit
from sklearn.utils.estimator_checks import parametrize_with_checks

import pipeline
from pipeline.models.estimators import mean_pinball
from pipeline.models.solvers.ar_qr import fit_predict_ar_qr_batch
from pipeline.models.solvers.benchmarks import fit_predict_climatology_batch, fit_predict_rw_batch
from pipeline.models.solvers.lqr import fit_predict_lqr_batch

QS = (0.1, 0.5, 0.9)
TINY_NN = dict(
    units_per_layer=(4,), epochs=2, patience=1, batch_size=256, parallel_models=2, device="cpu"
)


def small_estimators() -> list:
    """Each exported estimator with settings that fit in milliseconds."""
    return [
        pipeline.ARQR(p=1),
        pipeline.LQR(alphas=(1.0,), rff_features=8),
        pipeline.EnsembleNN(**TINY_NN),
        pipeline.RandomWalk(),
        pipeline.Climatology(),
    ]


# Why a check cannot pass, for every estimator: predict returns (m, Q), one column per quantile
# level, where scikit-learn's regressor checks expect predictions shaped like y.
MULTI_QUANTILE = "predict returns (m, Q) quantile forecasts, not one prediction per target"
# The benchmarks' row weights are a mask (0 leaves a row out, as the runtime pads windows);
# their empirical quantiles are unweighted by definition, so weight 2 is not a repeated row.
MASK_WEIGHTS = "sample_weight is a 0/1 row mask for the empirical quantiles, not a frequency"
EXPECTED_FAILURES = {
    "ARQR": {"check_regressors_train": MULTI_QUANTILE},
    "LQR": {"check_regressors_train": MULTI_QUANTILE},
    "EnsembleNN": {  # y (n, H), one column per horizon, is predicted as (m, H, Q)
        "check_regressors_train": MULTI_QUANTILE,
        "check_regressor_multioutput": MULTI_QUANTILE,
    },
    "RandomWalk": {
        "check_regressors_train": MULTI_QUANTILE,
        "check_sample_weight_equivalence_on_dense_data": MASK_WEIGHTS,
    },
    "Climatology": {
        "check_regressors_train": MULTI_QUANTILE,
        "check_sample_weight_equivalence_on_dense_data": MASK_WEIGHTS,
    },
}


@parametrize_with_checks(
    small_estimators(), expected_failed_checks=lambda e: EXPECTED_FAILURES[type(e).__name__]
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():  # torch, on scikit-learn's read-only test arrays
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        check(estimator)


def ar_data(n: int = 90, p: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An AR(1) series as a lag matrix X (n, p) (column 0 = y_t) and the target y_{t+1}."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n + p + 1)
    for t in range(1, y.size):
        y[t] = 0.6 * y[t - 1] + rng.standard_normal()
    t = np.arange(p - 1, p - 1 + n)
    return np.stack([y[t - lag] for lag in range(p)], -1), y[t + 1]


@pytest.mark.parametrize("estimator", small_estimators(), ids=lambda e: type(e).__name__)
def test_parameters_are_keyword_only_stored_unchanged_and_validated_in_fit(estimator):
    cls = type(estimator)
    with pytest.raises(TypeError):
        cls(QS)  # positional
    odd = cls(quantiles=[0.9, 0.1])  # invalid (not increasing): stored as given, no error yet
    assert odd.get_params()["quantiles"] == [0.9, 0.1]
    X, y = ar_data(40)
    with pytest.raises(ValueError, match="quantiles"):
        odd.fit(X, y)


@pytest.mark.parametrize("estimator", small_estimators(), ids=lambda e: type(e).__name__)
def test_clone_round_trips_and_predict_changes_nothing(estimator):
    estimator.set_params(quantiles=(0.25, 0.75))
    twin = clone(estimator)
    assert twin is not estimator and twin.get_params() == estimator.get_params()
    X, y = ar_data(60)
    estimator.fit(X, y)
    assert estimator.n_features_in_ == X.shape[1]
    before = copy.deepcopy(estimator.__dict__)
    pred = estimator.predict(X[:5])
    assert pred.shape == (5, 2) and np.all(np.diff(pred, axis=1) >= 0)
    after = estimator.__dict__
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, dict):
            for k in value:
                np.testing.assert_array_equal(value[k], after[key][k])
        else:
            np.testing.assert_array_equal(value, after[key])
    assert clone(estimator).get_params() == estimator.get_params()
    assert not hasattr(clone(estimator), "n_features_in_")  # clone is unfitted


def test_grid_search_with_time_series_split_and_a_pinball_scorer():
    X, y = ar_data(90, p=4)
    scorer = make_scorer(mean_pinball, greater_is_better=False, quantiles=QS)
    search = GridSearchCV(
        pipeline.ARQR(quantiles=QS), {"p": [1, 2, 4]}, cv=TimeSeriesSplit(3), scoring=scorer
    )
    search.fit(X, y)
    assert search.best_params_["p"] in (1, 2, 4)
    assert search.best_estimator_.coef_.shape == (3, search.best_params_["p"] + 1)
    # the default score is the same pinball loss, negated
    default = GridSearchCV(pipeline.ARQR(quantiles=QS), {"p": [1, 2, 4]}, cv=TimeSeriesSplit(3))
    default.fit(X, y)
    np.testing.assert_allclose(
        default.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"]
    )
    lqr = GridSearchCV(
        pipeline.LQR(quantiles=QS, alphas=(5.0,), rff_features=16),
        {"alphas": [(1.0,), (20.0,)], "rff_bandwidth": ["median", 2.0]},
        cv=TimeSeriesSplit(3),
        scoring=scorer,
    ).fit(X, y)
    assert len(lqr.cv_results_["params"]) == 4 and np.isfinite(lqr.best_score_)


def test_forecasts_are_the_batch_kernels():
    """What the runtime runs (the batch functions) and the estimators agree exactly."""
    X, y = ar_data(50, p=3, seed=1)
    X_new = X[-4:] + 0.5
    arqr = pipeline.ARQR(p=3, quantiles=QS).fit(X, y)
    np.testing.assert_array_equal(
        arqr.predict(X_new), fit_predict_ar_qr_batch(X[None], y[None], X_new[None], QS)[0][0]
    )
    params = dict(quantiles=QS, alphas=(7.5, 15.0), rff_features=16, validation_size=6)
    lqr = pipeline.LQR(**params).fit(X, y)
    batch = fit_predict_lqr_batch(X[None], y[None], X_new[None], **params)
    np.testing.assert_allclose(lqr.predict(X_new), batch.pred[0], rtol=0, atol=1e-12)
    w = np.ones_like(y)
    w[:5] = 0.0  # a masked row is left out
    for cls, kernel in (
        (pipeline.RandomWalk, fit_predict_rw_batch),
        (pipeline.Climatology, fit_predict_climatology_batch),
    ):
        model = cls(quantiles=QS).fit(X, y, sample_weight=w)
        expected = kernel(X[None], y[None], w[None], X_new[None], QS)[0]
        np.testing.assert_array_equal(model.predict(X_new), expected)


def test_ensemble_nn_panel_needs_country_at_predict():
    X, y = ar_data(60)
    country = np.repeat(["AT", "BE"], 30)
    model = pipeline.EnsembleNN(**TINY_NN).fit(X, y, country)
    assert model.predict(X[:3], country[:3]).shape == (3, 3)
    with pytest.raises(ValueError, match="needs country"):
        model.predict(X[:3])


def test_the_package_exports_the_api_and_nothing_else():
    import subprocess
    import sys

    assert sorted(pipeline.__all__) == sorted(pipeline._EXPORTS)
    for name in pipeline.__all__:
        assert getattr(pipeline, name).__name__ == name
    with pytest.raises(AttributeError):
        pipeline.run_study  # noqa: B018 (the internals are not the API)
    # lazy: importing the package loads no heavy dependency
    code = "import sys, pipeline; print(sorted({'torch', 'sklearn', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
