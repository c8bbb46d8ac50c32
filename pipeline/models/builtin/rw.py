"""`rw`: the no-change benchmark, y_T plus the empirical quantiles of the window's h-month
changes (kernel: pipeline.models.benchmarks). Parameter-free, so its fits are cached by data
alone; one batched numpy call per task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.models.spec import Adapter
from pipeline.schema import lag_column


@dataclass(frozen=True)
class RwConfig:
    enabled: bool


def _fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.benchmarks import fit_predict_rw_batch, training_pairs

    d = payload["data"]
    pred = fit_predict_rw_batch(d["X"], d["y"], d["w"], d["X_new"], payload["quantiles"])
    return {"pred": pred[:, :, None, :], "state": {"pairs": training_pairs(d["w"], d["y"])}}


CONFIG = RwConfig
ADAPTER = Adapter(
    name="rw",
    version=1,
    pooled=False,
    params=lambda c: {},
    features=lambda c: [lag_column("y", 0)],
    min_rows=lambda c: 2,
    fit_batch=_fit,
    batch_fits=256,
    config_type=RwConfig,
    rank=10,
)
