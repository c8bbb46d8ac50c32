"""rw's alpha is NaN for every fit: shard format 4 stores it as a flag, and train's driver keeps
it as one NaN row repeated (shard_pack.unpack's `nan_views`, KeptForecasts), not 24 bytes per
fit made again. What the table reads back must be what a dense NaN array gives, on every path
of KeptForecasts.take (one result's consecutive rows, runs of sources, a scattered gather).
"""

from __future__ import annotations

import numpy as np

from pipeline.runtime.execute.worker import shard_arrays
from pipeline.runtime.fits.kept_forecasts import KeptForecasts
from pipeline.runtime.store.shard_pack import encode_arrays

Q, H = 3, 2


def _result(n: int, seed: int) -> tuple[dict, np.ndarray]:
    """A train result whose forecasts travel in its shard (as run_task makes it), alpha all NaN."""
    pred = np.random.default_rng(seed).normal(size=(n, 1, H, Q))
    arrays = {
        "pred": pred,
        "alpha": np.full((n, Q), np.nan),
        "countries": np.array(["DE"] * n),
        "rows": np.ones((n, 1), dtype=bool),
    }
    return {"shard": encode_arrays(arrays, 64), "failed": []}, pred


def test_an_all_nan_alpha_is_kept_as_one_row() -> None:
    result, _ = _result(1000, 0)
    alpha = shard_arrays(result)["alpha"]
    assert alpha.shape == (1000, Q) and alpha.strides[0] == 0 and np.isnan(alpha).all()
    kept = KeptForecasts([(1000, 1, H)], Q)
    kept.add(0, np.arange(1000), shard_arrays(result)["pred"], alpha)
    held = kept.sources[0][0][1]
    assert held.strides[0] == 0 and held.base is not None and held.base.size <= Q


def test_tables_read_the_same_forecasts_as_from_dense_arrays() -> None:
    F = 3000
    kept = KeptForecasts([(F, 1, H)], Q)
    dense = KeptForecasts([(F, 1, H)], Q)
    rng = np.random.default_rng(1)
    for lo, hi in [(0, 1000), (1000, 1700), (1700, F)]:
        result, pred = _result(hi - lo, lo)
        back = shard_arrays(result)
        kept.add(0, np.arange(lo, hi), back["pred"], back["alpha"])
        dense.add(0, np.arange(lo, hi), pred, np.full((hi - lo, Q), np.nan))
    col = np.zeros(F, dtype=np.int64)
    for fit in (np.arange(200, 900), np.arange(500, 2500), rng.permutation(F)):
        got, want = kept.take(0, fit, col[: fit.size]), dense.take(0, fit, col[: fit.size])
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1].shape == (fit.size, Q)
