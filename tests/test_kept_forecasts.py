"""train keeps each result's forecasts as they arrived (runtime/fits/kept_forecasts.py) and
builds its table from those sources: the table must be the one built from arrays of every
fit, bit for bit, whatever the results' order, sizes and overlaps (a retried fit reads from
its latest result), for the cache lookup's arrays taken at their rows, and on both of the
build's paths (rows placed, rows sorted: pooled fits).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_forecast_blocks import random_study

import pipeline.runtime.fits.forecast_rows as forecast_rows
import pipeline.runtime.fits.kept_forecasts as kept_forecasts
from pipeline.runtime.fits.forecast_rows import forecast_chunks, table_chunks
from pipeline.runtime.fits.kept_forecasts import KeptForecasts


def _as_results(args: tuple, seed: int) -> KeptForecasts:  # type: ignore[type-arg]
    """The known fits of a dense study fed as train feeds them: a cache lookup's arrays (a
    shuffled stack, each fit at its row), then results of random sizes in random order,
    some fits first with wrong forecasts and then again (a retry) with the right ones."""
    groups, pred, alpha, have = args[:4]
    rng = np.random.default_rng(seed)
    Q = pred[0].shape[3]
    kept = KeptForecasts([(len(g), g.rows.shape[1], len(g.horizons)) for g in groups], Q)
    for gi in range(len(groups)):
        known = np.nonzero(have[gi])[0]
        cached, rest = np.split(rng.permutation(known), [known.size // 3])
        stack = rng.permutation(cached.size)  # the lookup's order: each fit at some row
        looked_up_pred = np.empty((cached.size, *pred[gi].shape[1:]))
        looked_up_alpha = np.empty((cached.size, Q))
        looked_up_pred[stack], looked_up_alpha[stack] = pred[gi][cached], alpha[gi][cached]
        kept.add(gi, cached, looked_up_pred, looked_up_alpha, rows=stack)
        wrong = rng.choice(rest, size=rest.size // 4, replace=False)
        kept.add(gi, wrong, pred[gi][wrong] + 1.0, alpha[gi][wrong] - 1.0)
        rest = np.sort(rest)  # a task's fits are a run of the group's
        for part in np.array_split(rest, max(1, rest.size // int(rng.integers(1, 9)))):
            kept.add(gi, part, pred[gi][part].copy(), alpha[gi][part].copy())
    for h, k in zip(have, kept.have, strict=True):
        np.testing.assert_array_equal(h, k)
    return kept


@pytest.mark.parametrize("model", ["ar_qr", "rw", "ensemble_nn"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_runs", [0, 1024])  # grouped by a sort / sliced runs
def test_tables_from_the_kept_results_equal_the_dense_build(
    monkeypatch: pytest.MonkeyPatch, model: str, seed: int, max_runs: int
) -> None:
    monkeypatch.setattr(kept_forecasts, "_MAX_RUNS", max_runs)
    args, _ = random_study(model, seed)
    kept = _as_results(args, seed)
    groups, rest = args[0], args[4:]
    for placed in (True, False):
        with monkeypatch.context() as m:
            if not placed:
                m.setattr(forecast_rows, "_slots", lambda *a: None)
            for chunk, block_rows in ((37, 7), (1 << 16, 1 << 40)):
                want = list(forecast_chunks(*args, chunk=chunk, block_rows=block_rows))
                got = list(table_chunks(groups, kept, *rest, chunk=chunk, block_rows=block_rows))
                assert pa.concat_tables(want).num_rows > 100
                assert [t.num_rows for t in got] == [t.num_rows for t in want]
                assert all(a.equals(b) for a, b in zip(got, want, strict=True))


def test_results_are_kept_not_copied() -> None:
    """A result's float64 arrays are the source (no copy per result); other dtypes are
    converted once, as the arrays of every fit converted them on assignment."""
    kept = KeptForecasts([(10, 1, 2)], 3)
    pred, alpha = np.arange(24.0).reshape(4, 1, 2, 3), np.zeros((4, 3))
    kept.add(0, np.array([1, 3, 5, 7]), pred, alpha)
    assert np.shares_memory(kept.sources[0][0][0], pred)
    assert np.shares_memory(kept.sources[0][0][1], alpha)
    kept.add(0, np.array([2]), pred[:1].astype(np.float32), alpha[:1])
    p, a = kept.take(0, np.array([7, 2, 1]), np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(p, pred[[3, 0, 0], 0])
    assert p.dtype == a.dtype == np.float64
