"""`rw`: the no-change benchmark, y_T plus the empirical quantiles of the window's h-month
changes (kernel: pipeline.models.solvers.benchmarks). Parameter-free, so its fits are cached by data
alone; one batched numpy call per task.

Imports: builtin._benchmarks and solvers.benchmarks (numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.plugins.builtin._benchmarks import benchmark_adapter
from pipeline.models.solvers.benchmarks import fit_predict_rw_batch


@dataclass(frozen=True)
class RwConfig:
    enabled: bool


CONFIG = RwConfig
ADAPTER = benchmark_adapter("rw", fit_predict_rw_batch, RwConfig, rank=10)
