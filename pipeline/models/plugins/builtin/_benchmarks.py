"""The adapter of the parameter-free benchmarks (rw, climatology): the plugin side of their
kernels in pipeline.models.solvers.benchmarks (which know nothing of the runtime or the config).

Imports: plugins.spec, solvers.benchmarks (numpy only) and pipeline.schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.models.plugins.spec import Adapter
from pipeline.models.solvers.benchmarks import training_pairs
from pipeline.schema import lag_column


def benchmark_adapter(
    name: str, kernel: Callable[..., np.ndarray], config_type: type, rank: int
) -> Adapter:
    """The adapter of a parameter-free benchmark (rw, climatology): features y_t only, fits
    cached by data alone, one batched numpy call per task of up to 256 fits."""

    def fit(payload: dict[str, Any]) -> dict[str, Any]:
        d = payload["data"]
        pred = kernel(d["X"], d["y"], d["w"], d["X_new"], payload["quantiles"])
        return {"pred": pred[:, :, None, :], "state": {"pairs": training_pairs(d["w"], d["y"])}}

    return Adapter(
        name=name,
        version=1,
        pooled=False,
        params=lambda c: {},
        features=lambda c: [lag_column("y", 0)],
        min_rows=lambda c: 2,
        fit_batch=fit,
        batch_fits=256,
        config_type=config_type,
        rank=rank,
    )
