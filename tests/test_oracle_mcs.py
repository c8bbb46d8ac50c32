"""The Model Confidence Set against a transcription of Hansen, Lunde and Nason (2011,
Econometrica 79(2), section 3.1.2, the range statistic T_R, and its bootstrap
implementation in their section 5 / appendix), given the bootstrap's resampled origins:
model_confidence_set delegates to arch.bootstrap.MCS, so this checks the statistic, the
elimination order and the running-maximum p-values that reach the results page."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.mcs import model_confidence_set


def hln_range_mcs(losses: np.ndarray, resamples: list[np.ndarray]) -> np.ndarray:
    """MCS p-values by the range rule: d_ij = mean loss of i minus j, its variance the mean
    square of the bootstrap deviations d*_ij - d_ij, t_ij = d_ij / sd; T_R = max |t_ij| over
    the models left, p = share of bootstrap max |d*_ij - d_ij| / sd strictly above T_R; the
    eliminated model is argmax_i max_j t_ij; a model's MCS p-value is the largest p so far,
    the last model's 1."""
    k = losses.shape[1]
    mean = losses.mean(axis=0)
    d = mean[:, None] - mean[None, :]
    boot = np.array([losses[idx].mean(axis=0) for idx in resamples])
    deviation = (boot[:, :, None] - boot[:, None, :]) - d  # (B, k, k)
    sd = np.sqrt((deviation**2).mean(axis=0))
    left = list(range(k))
    pvalues = np.ones(k)
    running = 0.0
    while len(left) > 1:
        sub = np.ix_(left, left)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(np.eye(len(left), dtype=bool), 0.0, d[sub] / sd[sub])
            t_star = np.abs(deviation[:, left][:, :, left]) / np.where(
                np.eye(len(left), dtype=bool), np.inf, sd[sub]
            )
        stat = np.abs(t).max()
        p = float((t_star.max(axis=(1, 2)) > stat).mean())
        worst = left[int(np.argmax(t.max(axis=1)))]
        running = max(running, p)
        pvalues[worst] = running
        left.remove(worst)
    return pvalues


def _losses(seed: int, means: list[float], n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    common = rng.standard_t(5, size=n)  # a shared shock: losses correlated across models
    columns = {
        f"m{i}": mean + common + 0.7 * rng.standard_t(5, size=n) for i, mean in enumerate(means)
    }
    return pd.DataFrame(columns, index=pd.date_range("2015-01-01", periods=n, freq="MS"))


@pytest.mark.parametrize(
    ("seed", "means"),
    [
        (0, [0.0, 0.1]),
        (1, [0.0, 0.05, 0.3, 0.6]),
        (2, [0.2, 0.0, 0.0, 0.25, 1.0]),
        (3, [0.0, 0.0, 0.0]),
    ],
)
def test_model_confidence_set_equals_the_hln_range_rule(seed, means):
    from arch.bootstrap import MCS

    losses = _losses(seed, means)
    table = model_confidence_set(losses, size=0.1, reps=300, seed=seed)
    # the same resampled origins as the pipeline's call (same block size, seed, reps)
    direct = MCS(losses, size=0.1, reps=300, method="R", bootstrap="stationary", seed=seed)
    direct.compute()
    want = hln_range_mcs(losses.to_numpy(), direct._bootstrap_indices)
    np.testing.assert_allclose(table["P_VALUE"].to_numpy(), want, rtol=0, atol=1e-12)
    assert table["IN_MCS"].tolist() == (want > 0.1).tolist()
    assert table["P_VALUE"].max() == 1.0  # the last model standing


def test_a_clearly_worse_model_leaves_the_set_and_equals_stay():
    losses = _losses(5, [0.0, 0.0, 2.0], n=80)
    table = model_confidence_set(losses, reps=300, seed=1).set_index("MODEL")
    assert not table.loc["m2", "IN_MCS"] and table.loc["m2", "P_VALUE"] < 0.01
    assert table.loc[["m0", "m1"], "IN_MCS"].all()
