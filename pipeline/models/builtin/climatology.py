"""`climatology`: the benchmark of the window's empirical quantiles of the target y_{t+h}
(kernel: pipeline.models.benchmarks). Parameter-free, so its fits are cached by data
alone; one batched numpy call per task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.models.spec import Adapter
from pipeline.schema import lag_column


@dataclass(frozen=True)
class ClimatologyConfig:
    enabled: bool


def _fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.benchmarks import fit_predict_climatology_batch, training_pairs

    d = payload["data"]
    pred = fit_predict_climatology_batch(d["X"], d["y"], d["w"], d["X_new"], payload["quantiles"])
    return {"pred": pred[:, :, None, :], "state": {"pairs": training_pairs(d["w"], d["y"])}}


CONFIG = ClimatologyConfig
ADAPTER = Adapter(
    name="climatology",
    version=1,
    pooled=False,
    params=lambda c: {},
    features=lambda c: [lag_column("y", 0)],
    min_rows=lambda c: 2,
    fit_batch=_fit,
    batch_fits=256,
    config_type=ClimatologyConfig,
    rank=11,
)
