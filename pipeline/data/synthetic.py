"""A seeded synthetic monthly inflation panel whose true conditional quantiles are known.

    f_t     = phi_f f_{t-1} + s_f eta_t                        common factor, eta ~ N(0, 1)
    x_{c,t} = phi_c x_{c,t-1} + sigma_c eps_{c,t}              country dynamics, eps ~ t(5) / sd
    y_{c,t} = mu_c + beta_c f_t + surge_t + x_{c,t}            inflation, in % per year

`surge_t` is a deterministic 2021-22 style hump (known in advance, like a forecaster's view of
an energy shock is not; it only shapes the path). Given the state (f_t, x_{c,t}) at t, the
h-step-ahead distribution is a sum of independent shocks; `true_quantiles` returns its
quantiles by seeded Monte Carlo, which tests use to check calibration against the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import SyntheticConfig
from pipeline.schema import COUNTRY, TIME, month_index

T_DOF = 5.0
_T_SD = np.sqrt(T_DOF / (T_DOF - 2.0))  # makes the t(5) shocks unit variance
PHI_F, S_F = 0.9, 0.35
# the panel's value columns, named once: the target (conf/data/synthetic.yaml's `target`) and
# the extra columns a study may lag with data.features (that file's comment lists them;
# tests/test_one_source.py holds both equal to these)
TARGET_COLUMN = "inflation"
FEATURE_COLUMNS = ("core",)


@dataclass(frozen=True)
class SyntheticPanel:
    frame: pd.DataFrame  # TIME, COUNTRY, TARGET_COLUMN, *FEATURE_COLUMNS
    factor: np.ndarray  # (T,)
    idiosyncratic: np.ndarray  # (C, T)
    params: pd.DataFrame  # per country: mu, beta, phi, sigma
    surge: np.ndarray  # (T,) deterministic component


def surge_path(months: pd.DatetimeIndex) -> np.ndarray:
    """A hump rising from 2021-03, peaking at +6 pp in late 2022, fading through 2023."""
    t = month_index(months) - month_index("2021-03-01")
    bump = np.where((t >= 0) & (t <= 34), 6.0 * np.sin(np.pi * np.clip(t, 0, 34) / 34) ** 2, 0.0)
    return bump.astype(np.float64)


def generate_panel(config: SyntheticConfig) -> SyntheticPanel:
    rng = np.random.default_rng(config.seed)
    months = pd.date_range(config.start, config.end, freq="MS")
    n_t, n_c = len(months), config.n_countries
    countries = config.country_names()
    params = pd.DataFrame(
        {
            "mu": rng.uniform(1.0, 3.5, n_c),
            "beta": rng.uniform(0.6, 1.4, n_c),
            "phi": rng.uniform(0.75, 0.95, n_c),
            "sigma": rng.uniform(0.25, 0.6, n_c),
        },
        index=pd.Index(countries, name=COUNTRY),
    )
    factor = np.zeros(n_t)
    idio = np.zeros((n_c, n_t))
    eta = rng.standard_normal(n_t)
    eps = rng.standard_t(T_DOF, size=(n_c, n_t)) / _T_SD
    for t in range(1, n_t):
        factor[t] = PHI_F * factor[t - 1] + S_F * eta[t]
        idio[:, t] = (
            params["phi"].to_numpy() * idio[:, t - 1] + params["sigma"].to_numpy() * eps[:, t]
        )
    surge = surge_path(months)
    y = (
        params["mu"].to_numpy()[:, None]
        + params["beta"].to_numpy()[:, None] * factor
        + surge
        + idio
    )
    core = 0.5 * y + 0.5 * (params["mu"].to_numpy()[:, None] + surge)
    frame = pd.DataFrame(
        {
            TIME: np.tile(months.to_numpy(), n_c),
            COUNTRY: np.repeat(countries, n_t),
            TARGET_COLUMN: np.round(y, 6).ravel(),
            "core": np.round(core, 6).ravel(),
        }
    )
    # Real panels have gaps: two late starters and a short interior gap, to exercise the policy.
    if n_c >= 3:
        frame.loc[
            (frame[COUNTRY] == countries[1]) & (frame[TIME] < "2003-01-01"),
            [TARGET_COLUMN, *FEATURE_COLUMNS],
        ] = np.nan
        frame.loc[
            (frame[COUNTRY] == countries[2]) & frame[TIME].between("2010-05-01", "2010-07-01"),
            TARGET_COLUMN,
        ] = np.nan
    return SyntheticPanel(
        frame=frame, factor=factor, idiosyncratic=idio, params=params, surge=surge
    )


def true_quantiles(
    panel: SyntheticPanel,
    origin_index: int,
    horizon: int,
    quantiles: Sequence[float],
    n_draws: int = 20_000,
    seed: int = 12345,
) -> np.ndarray:
    """True quantiles of y_{c, t+h} given the state at t = origin_index, shape (C, Q)."""
    rng = np.random.default_rng(seed)
    phi_c = panel.params["phi"].to_numpy()[:, None]
    sigma_c = panel.params["sigma"].to_numpy()[:, None]
    f = np.full(n_draws, panel.factor[origin_index])
    x = np.repeat(panel.idiosyncratic[:, origin_index : origin_index + 1], n_draws, axis=1)
    for _ in range(horizon):
        f = PHI_F * f + S_F * rng.standard_normal(n_draws)
        x = phi_c * x + sigma_c * rng.standard_t(T_DOF, size=x.shape) / _T_SD
    target = origin_index + horizon
    draws = (
        panel.params["mu"].to_numpy()[:, None]
        + panel.params["beta"].to_numpy()[:, None] * f
        + panel.surge[target]
        + x
    )
    return np.quantile(draws, list(quantiles), axis=1).T
