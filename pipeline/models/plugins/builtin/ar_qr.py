"""`ar_qr`: direct autoregressive quantile regression, y_{t+h} on 1, y_t, ..., y_{t-p+1}.

The kernel is pipeline.models.solvers.ar_qr (exact LP fit, batched over windows).

Imports: plugins.spec, solvers/ (parameters and rules; the kernel inside `_fit`) and
pipeline.schema; the config for types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.models.plugins.spec import Adapter
from pipeline.models.solvers.parameters import P
from pipeline.models.solvers.rules import declared
from pipeline.schema import lag_column

if TYPE_CHECKING:
    from pipeline.config.study import StudyConfig


@dataclass(frozen=True)
class ArQrConfig:
    enabled: bool
    p: int = field(metadata=declared(P))


def _params(config: StudyConfig) -> dict[str, Any]:
    return {"p": config.models.ar_qr.p}


def _fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.solvers.ar_qr import fit_predict_ar_qr_batch

    d = payload["data"]
    pred, crossing, coef = fit_predict_ar_qr_batch(
        d["X"], d["y"], d["X_new"], payload["quantiles"], w=d["w"]
    )
    return {"pred": np.asarray(pred)[:, :, None, :], "state": {"coef": coef, "crossing": crossing}}


CONFIG = ArQrConfig
ADAPTER = Adapter(
    name="ar_qr",
    version=2,  # 2: the LP solver in numpy, not torch (same optima; last bits differ, issue 18)
    pooled=False,
    params=_params,
    features=lambda c: [lag_column("y", lag) for lag in range(c.models.ar_qr.p)],
    min_rows=lambda c: c.models.ar_qr.p + 2,
    fit_batch=_fit,
    lags=lambda c: range(c.models.ar_qr.p),
    config_type=ArQrConfig,
    rank=0,
    # the LP's float64 rows are 32-byte multiples: a fit's bits follow its batch position's
    # parity (AVX-512 alignment); 8 covers any 8-byte stride against 64-byte vectors
    slot_period=8,
)
