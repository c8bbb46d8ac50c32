"""qpipe: quantile-forecasting backtests (Hydra config, DVC stages, a Dask runtime).

The public API, and nothing else: `backtest` (run a study, get its forecasts and metrics),
`Result`, the scikit-learn estimators and `QpipeError` (the base of every error qpipe raises
for bad input). Attributes load on first use, so `import pipeline` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "backtest": "pipeline.api",
    "Result": "pipeline.api",
    "QpipeError": "pipeline.errors",
    "ARQR": "pipeline.models.estimators",
    "LQR": "pipeline.models.estimators",
    "EnsembleNN": "pipeline.models.estimator_nn",
    "RandomWalk": "pipeline.models.estimators",
    "Climatology": "pipeline.models.estimators",
}
__all__ = [
    "ARQR",
    "LQR",
    "Climatology",
    "EnsembleNN",
    "QpipeError",
    "RandomWalk",
    "Result",
    "backtest",
]

if TYPE_CHECKING:
    from pipeline.api import Result, backtest
    from pipeline.errors import QpipeError
    from pipeline.models.estimator_nn import EnsembleNN
    from pipeline.models.estimators import ARQR, LQR, Climatology, RandomWalk


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
