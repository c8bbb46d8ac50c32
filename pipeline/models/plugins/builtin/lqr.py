"""`lqr`: penalized linear quantile regression on lagged features + random Fourier features.

The kernel is pipeline.models.solvers.lqr (penalty chosen per window by time-ordered validation).

Imports: plugins.spec, solvers/ (parameters and rules; the kernel inside `_fit`); the
config for types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.models.plugins.spec import Adapter, lag_features
from pipeline.models.solvers.parameters import (
    ALPHAS,
    BANDWIDTH,
    LQR_BATCH,
    RFF_FEATURES,
    SOLVER,
    VALIDATION_SIZE,
)
from pipeline.models.solvers.rules import declared, rule

if TYPE_CHECKING:
    from pipeline.config.study import StudyConfig


@dataclass(frozen=True)
class LqrConfig:
    enabled: bool
    alphas: tuple[float, ...] = field(metadata=declared(ALPHAS))
    solver: str = field(metadata=declared(SOLVER))
    rff_features: int = field(metadata=declared(RFF_FEATURES))
    rff_bandwidth: float | Literal["auto"] = field(  # auto: the kernel's median heuristic
        metadata=rule(lambda v: v == "auto" or BANDWIDTH.test(v), "'auto' or a positive number")
    )
    validation_size: int = field(metadata=declared(VALIDATION_SIZE))
    penalize_first_lag: bool


def _params(config: StudyConfig) -> dict[str, Any]:
    m = config.models.lqr
    return {
        "alphas": [float(a) for a in m.alphas],
        "solver": m.solver,
        "rff_features": m.rff_features,
        "rff_bandwidth": m.rff_bandwidth,
        "validation_size": m.validation_size,
        "penalize_first_lag": m.penalize_first_lag,
        "lags": list(config.data.lags),
    }


def _fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.solvers.lqr import fit_predict_lqr_batch

    d, p = payload["data"], payload["params"]
    res = fit_predict_lqr_batch(
        d["X"],
        d["y"],
        d["X_new"],
        quantiles=payload["quantiles"],
        alphas=p["alphas"],
        solver=p["solver"],
        rff_features=p["rff_features"],
        rff_bandwidth="median" if p["rff_bandwidth"] == "auto" else float(p["rff_bandwidth"]),
        validation_size=p["validation_size"],
        penalize_first_lag=p["penalize_first_lag"],
        seed=payload["seed"],
        w=d["w"],
    )
    state = {k: np.asarray(v) for k, v in res.state.items()}
    state["crossing"] = np.asarray(res.crossing)
    return {
        "pred": np.asarray(res.pred)[:, :, None, :],
        "alpha": np.asarray(res.alpha),
        "state": state,
    }


CONFIG = LqrConfig
ADAPTER = Adapter(
    name="lqr",
    # 2: batch-invariant arithmetic (a fit's bits no longer follow its batch); 3: alphas after
    # the first and the refit by an active-set method (exact optima, issue 19); 4: the
    # interior point crosses over to the active set, a flat intercept is its interval's
    # analytic centre (issue 19 item 4)
    version=4,
    pooled=False,
    params=_params,
    features=lambda c: lag_features(c, [0, *c.data.lags]),
    min_rows=lambda c: c.models.lqr.validation_size + 2,
    fit_batch=_fit,
    batch_fits=LQR_BATCH,  # the solver's fixed cost per call is amortized over many fits
    config_type=LqrConfig,
    rank=1,
)
