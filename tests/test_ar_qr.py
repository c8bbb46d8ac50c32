"""ARQR: calibration on a known AR(1), batch == single, non-crossing, save/load, bad params."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.models.estimators import ARQR
from pipeline.models.solvers.ar_qr import fit_predict_ar_qr_batch

QS = (0.1, 0.5, 0.9)


def ar1_windows(B: int, n: int, p: int, seed: int, df: float = 5.0, phi: float = 0.6):
    """B independent AR(1) paths with Student-t shocks; training pairs (lags at t, y_{t+1}),
    the features at the origin T and the realised y_{T+1}."""
    rng = np.random.default_rng(seed)
    burn, length = 50, n + p + 1
    y = np.zeros((B, burn + length))
    e = rng.standard_t(df, (B, burn + length))
    for t in range(1, burn + length):
        y[:, t] = phi * y[:, t - 1] + e[:, t]
    y = y[:, burn:]
    t = np.arange(p - 1, p - 1 + n)  # training origins
    X = np.stack([y[:, t - lag] for lag in range(p)], -1)
    T = p - 1 + n  # forecast origin: y_{T+1} is the last value, never seen in training
    X_new = np.stack([y[:, [T - lag]] for lag in range(p)], -1)
    return X, y[:, t + 1], X_new, y[:, T + 1], phi * y[:, T]


def test_calibration_on_ar1_with_student_t_shocks() -> None:
    """Out-of-sample coverage of each quantile.

    The B forecasts come from independent series, so the hit indicators are independent
    Bernoulli(tau + bias): the standard error is sqrt(tau (1 - tau) / B) (0.0067 at tau=0.1,
    B=2000). The tolerance is 4 standard errors plus (p + 1) / (2 n), a bound on the
    finite-sample coverage bias of a quantile regression with p + 1 coefficients on n rows.
    """
    B, n, p, df = 2000, 120, 2, 5.0
    X, y, X_new, y_next, mean_next = ar1_windows(B, n, p, seed=0, df=df)
    pred, _, coef = fit_predict_ar_qr_batch(X, y, X_new, QS)
    for j, q in enumerate(QS):
        se = np.sqrt(q * (1 - q) / B)
        # the generator is right: the true conditional quantile covers within 4 se
        true_q = mean_next + stats.t.ppf(q, df)
        assert abs(np.mean(y_next <= true_q) - q) <= 4 * se
        cover = np.mean(y_next <= pred[:, 0, j])
        assert abs(cover - q) <= 4 * se + (p + 1) / (2 * n), (q, cover)
    # the slope on y_t is estimated around the true 0.6 (median regression)
    assert abs(np.median(coef[:, 1, 1]) - 0.6) < 0.05


def test_batch_equals_one_at_a_time_and_never_crosses() -> None:
    X, y, X_new, _, _ = ar1_windows(5, 30, 3, seed=1)
    X_new = np.concatenate([X_new, 10 * X[:, :4]], 1)  # far-out rows provoke crossings
    pred, crossing, coef = fit_predict_ar_qr_batch(X, y, X_new, QS)
    assert crossing.max() > 0  # the case really crosses before rearrangement
    assert np.all(np.diff(pred, axis=-1) >= 0)
    for b in range(5):
        model = ARQR(p=3, quantiles=QS).fit(X[b], y[b])
        np.testing.assert_allclose(model.coef_, coef[b], rtol=0, atol=1e-9)
        np.testing.assert_allclose(model.predict(X_new[b]), pred[b], rtol=0, atol=1e-9)
        assert model.crossing_rate(X_new[b]) == pytest.approx(crossing[b])
    raw = np.concatenate([np.ones((*X_new.shape[:2], 1)), X_new], -1) @ coef.transpose(0, 2, 1)
    expected = np.any(np.diff(raw, axis=-1) < 0, -1).mean(1)
    np.testing.assert_array_equal(crossing, expected)


def test_padding_rows_after_origin_do_not_change_forecasts() -> None:
    """No look-ahead: rows past the origin passed with weight 0 (any values) are ignored."""
    X, y, X_new, _, _ = ar1_windows(4, 40, 2, seed=2)
    w = np.ones_like(y)
    w[:, -8:] = 0.0
    base = fit_predict_ar_qr_batch(X, y, X_new, QS, w=w)[0]
    rng = np.random.default_rng(0)
    X2, y2 = X.copy(), y.copy()
    X2[:, -8:] += 100 * rng.standard_normal(X2[:, -8:].shape)
    y2[:, -8:] = np.nan
    np.testing.assert_array_equal(fit_predict_ar_qr_batch(X2, y2, X_new, QS, w=w)[0], base)
    trimmed = fit_predict_ar_qr_batch(X[:, :-8], y[:, :-8], X_new, QS)[0]
    np.testing.assert_allclose(trimmed, base, rtol=0, atol=1e-9)


def test_save_load_round_trip(tmp_path) -> None:
    X, y, X_new, _, _ = ar1_windows(1, 50, 4, seed=3)
    model = ARQR(p=4, quantiles=QS).fit(X[0], y[0])
    model.save(tmp_path / "m.npz")
    loaded = ARQR.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(X_new[0]), model.predict(X_new[0]))
    again = ARQR.from_arrays(model.to_arrays())
    np.testing.assert_array_equal(again.predict(X[0]), model.predict(X[0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 0}, r"'p': expected an integer autoregressive order p >= 1; got 0"),
        ({"p": 1.5}, r"'p': expected an integer"),
        ({"quantiles": (0.0, 0.5)}, r"'quantiles\[0\]': expected a quantile strictly inside"),
        ({"quantiles": (0.5, 1.2)}, r"'quantiles\[1\]': expected a quantile strictly inside"),
        ({"quantiles": (0.9, 0.1)}, "strictly increasing"),
        ({"quantiles": ()}, "non-empty"),
    ],
)
def test_bad_parameters(kwargs, match) -> None:
    params = {"p": 2, "quantiles": QS, **kwargs}
    X = np.ones((10, 2)) if isinstance(params["p"], float) else np.ones((10, max(params["p"], 1)))
    with pytest.raises(ValueError, match=match):
        ARQR(**params).fit(X, np.arange(10.0))


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least p=3 lag columns"):
        ARQR(p=3).fit(np.ones((10, 2)), np.ones(10))
    fitted = ARQR(p=2).fit(np.random.default_rng(0).standard_normal((20, 3)), np.arange(20.0))
    with pytest.raises(ValueError, match="3 features"):  # predict needs fit's columns
        fitted.predict(np.ones((4, 2)))


def test_a_wider_lag_matrix_uses_its_first_p_columns() -> None:
    """One lag matrix serves a grid over p: the extra columns are not regressors."""
    X, y, X_new, _, _ = ar1_windows(1, 40, 4, seed=3)
    wide = ARQR(p=2, quantiles=QS).fit(X[0], y[0])
    narrow = ARQR(p=2, quantiles=QS).fit(X[0, :, :2], y[0])
    np.testing.assert_array_equal(wide.coef_, narrow.coef_)
    np.testing.assert_array_equal(wide.predict(X_new[0]), narrow.predict(X_new[0, :, :2]))
    with pytest.raises(ValueError, match="X_new must have shape"):
        fit_predict_ar_qr_batch(np.ones((2, 10, 3)), np.ones((2, 10)), np.ones((2, 1, 4)), QS)
