"""`climatology`: the benchmark of the window's empirical quantiles of the target y_{t+h}
(kernel: pipeline.models.solvers.benchmarks). Parameter-free, so its fits are cached by data
alone; one batched numpy call per task.

Imports: builtin._benchmarks and solvers.benchmarks (numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.plugins.builtin._benchmarks import benchmark_adapter
from pipeline.models.solvers.benchmarks import fit_predict_climatology_batch


@dataclass(frozen=True)
class ClimatologyConfig:
    enabled: bool


CONFIG = ClimatologyConfig
ADAPTER = benchmark_adapter(
    "climatology", fit_predict_climatology_batch, ClimatologyConfig, rank=11
)
