"""The Diebold-Mariano test of loss differentials (pure): the statistic of one series and the
table of every model against the benchmark (metrics.diebold_mariano, metrics.metric_tables).

d = rho(model) - rho(benchmark) per common row, averaged over the rows of a group that share
TIME, giving one series per group on a monthly grid; HAC variance with Bartlett weights and
h - 1 lags; optional Harvey-Leybourne-Newbold correction with a t(T - 1) p-value (else
normal). Negative statistic = the model beats the benchmark.

One table tests many models at many horizons, so some raw p-values fall below 5% by chance
alone: P_HOLM is each p-value adjusted by Holm's step-down method over the table's rows (the
family: every comparison against one benchmark in one evaluation period), which keeps the
chance of any false "significant" at most the level. The model confidence set (mcs.py) is the
joint answer to "which models does nothing beat".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.forecast_table import HORIZON, MODEL, TIME
from pipeline.evaluation.pvalues import holm, norm_sf, t_sf
from pipeline.schema import month_index


def dm_test(d: np.ndarray, horizon: int, *, small_sample: bool = True) -> tuple[float, float]:
    """Diebold-Mariano statistic and two-sided p-value of a loss-differential series.

    `d` is on a regular monthly grid; NaN marks a month without a differential (the gap stays
    a gap: autocovariances use only pairs of observed months, divided by T = observed count).
    Variance of the mean: (g0 + 2 sum_{k<h} (1 - k/h) g_k) / T (Bartlett, h - 1 lags), which
    equals statsmodels' HAC covariance of a constant-only OLS with maxlags = h - 1 when there
    are no gaps. `small_sample` applies the Harvey-Leybourne-Newbold factor and a t(T - 1)
    p-value; otherwise the p-value is normal. Zero differential everywhere gives (0, 1).
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1; got {horizon!r}")
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"d must be a 1-D series; got shape {d.shape}")
    seen = np.isfinite(d)
    t = int(seen.sum())
    if t < 2:
        return math.nan, math.nan
    mean = float(d[seen].mean())
    e = np.where(seen, d - mean, 0.0)  # a gap contributes no product
    # autocovariances past the series' end are 0, but the weights stay 1 - k/h: a series
    # shorter than h keeps the Bartlett kernel of h - 1 lags (statsmodels' too), not T - 1's
    lags = min(int(horizon) - 1, d.size - 1)
    gamma = np.array([e[k:] @ e[: d.size - k] for k in range(lags + 1)]) / t
    weights = 1.0 - np.arange(lags + 1) / float(horizon)
    long_run = gamma[0] + 2.0 * float(weights[1:] @ gamma[1:])
    if long_run <= 0.0:
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    stat = mean / math.sqrt(long_run / t)
    if not small_sample:
        return stat, float(2.0 * norm_sf(abs(stat)))
    h = int(horizon)
    factor = (t + 1 - 2 * h + h * (h - 1) / t) / t
    if factor <= 0.0:
        return math.nan, math.nan
    stat *= math.sqrt(factor)
    return stat, float(2.0 * t_sf(abs(stat), df=t - 1))


def dm_rows(
    joined: pd.DataFrame,
    benchmark: str,
    by: list[str],
    small_sample: bool,
    key_dtypes: dict[str, Any],
) -> pd.DataFrame:
    """The DM table (metrics.diebold_mariano) from the scored rows joined to the benchmark's
    loss (LOSS, BENCH_LOSS): `*by, N, MONTHS, MEAN_DIFF, STAT, P_VALUE, P_HOLM`; P_HOLM
    adjusts P_VALUE for the number of the table's rows (`pvalues.holm`)."""
    joined = joined.loc[joined[MODEL] != benchmark]
    joined = joined.assign(
        D=joined["LOSS"] - joined["BENCH_LOSS"],
        M=month_index(joined[TIME]),
    )
    series = joined.groupby([*by, "M"], sort=True, observed=True).agg(
        D=("D", "mean"), N=("D", "size")
    )
    records = []
    for keys, part in series.groupby(level=list(range(len(by))), sort=True, observed=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        months = part.index.get_level_values("M").to_numpy()
        grid = np.full(months.max() - months.min() + 1, np.nan)
        grid[months - months.min()] = part["D"].to_numpy()
        horizon = int(dict(zip(by, keys, strict=True))[HORIZON])
        stat, p_value = dm_test(grid, horizon, small_sample=small_sample)
        records.append(
            (*keys, int(part["N"].sum()), len(months), float(part["D"].mean()), stat, p_value)
        )
    columns = [*by, "N", "MONTHS", "MEAN_DIFF", "STAT", "P_VALUE"]
    table = pd.DataFrame.from_records(records, columns=columns)
    table["P_HOLM"] = holm(table["P_VALUE"].to_numpy(np.float64))
    if not records:  # keep the key dtypes of the input on an empty result
        table = table.astype({c: key_dtypes[c] for c in by})
    return table.astype({"N": "int64", "MONTHS": "int64"})


def with_holm(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """A DM table of both periods with P_HOLM: tables written before it get it computed here,
    one family per PERIOD as dm_rows makes it, so an older output dir's page can be rebuilt."""
    if table is None or table.empty or "P_HOLM" in table.columns:
        return table
    by_period = table.groupby("PERIOD", sort=False)["P_VALUE"]
    return table.assign(P_HOLM=by_period.transform(lambda p: holm(p.to_numpy(np.float64))))
