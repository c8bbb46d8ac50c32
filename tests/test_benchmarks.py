"""Benchmarks `rw` and `climatology` against a direct pandas computation on a prepared panel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.data.prepared import load_panel
from pipeline.models.plugins.registry import get_adapter
from pipeline.models.solvers.benchmarks import fit_predict_climatology_batch, fit_predict_rw_batch
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.schema import month_index

CASES = [("C01", "2018-01-01", 1), ("C02", "2018-07-01", 3), ("C04", "2018-12-01", 1)]


def _direct(panel: pd.DataFrame, country: str, origin: str, h: int, size: int, q: float):
    """rw and climatology for one (country, origin, horizon), straight from the panel."""
    y = panel.loc[panel["COUNTRY"] == country].set_index("TIME")["y"]
    t = pd.date_range(
        end=pd.Timestamp(origin) - pd.DateOffset(months=h), periods=size - h, freq="MS"
    )
    target = y.reindex(t + pd.DateOffset(months=h)).to_numpy()
    change = pd.Series(target - y.reindex(t).to_numpy()).dropna()
    return y[pd.Timestamp(origin)] + change.quantile(q), pd.Series(target).dropna().quantile(q)


@pytest.mark.parametrize(("country", "origin", "h"), CASES)
def test_benchmarks_equal_pandas_on_prepared_panel(prepared_study, country, origin, h):
    config = prepared_study
    panel = load_panel(config.runtime.output_dir)
    size, quantiles = config.rolling_window.size, config.data.quantiles
    for name in ("rw", "climatology"):
        adapter = get_adapter(name)
        (group,) = [g for g in build_groups(panel, config, adapter) if g.horizon == h]
        (i,) = np.nonzero((group.country == country) & (group.origin == month_index(origin)))[0]
        out = adapter.fit_batch({"data": group.take(np.array([i])), "quantiles": quantiles})
        for j, q in enumerate(quantiles):
            rw, clim = _direct(panel, country, origin, h, size, q)
            expected = rw if name == "rw" else clim
            assert out["pred"][0, 0, 0, j] == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert out["state"]["pairs"][0] == size - h


def test_batched_kernels_mask_padding_and_are_batch_independent():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 10, 2))
    y = rng.normal(size=(3, 10))
    w = np.ones((3, 10))
    w[1, 6:] = 0.0  # fit 1 has only 6 rows
    X_new = rng.normal(size=(3, 1, 2))
    q = [0.1, 0.5, 0.9]
    rw = fit_predict_rw_batch(X, y, w, X_new, q)
    assert rw[1, 0] == pytest.approx(X_new[1, 0, 0] + np.quantile(y[1, :6] - X[1, :6, 0], q))
    alone = fit_predict_rw_batch(X[1:2, :6], y[1:2, :6], w[1:2, :6], X_new[1:2], q)
    np.testing.assert_array_equal(alone[0], rw[1])
    clim = fit_predict_climatology_batch(X, y, w, X_new, q)
    assert clim[2, 0] == pytest.approx(np.quantile(y[2], q))
    empty = fit_predict_climatology_batch(X, y, np.zeros_like(w), X_new, q)
    assert np.isnan(empty).all()
    with pytest.raises(ValueError, match="X must be"):
        fit_predict_rw_batch(X, y[:, :3], w, X_new, q)
