"""`Adapter`: how the runtime drives one model, declared by the model itself.

An adapter tells the runtime, for one model: its key parameters, the panel columns a fit
reads, how many complete window rows a fit needs, whether a fit pools every country, and
`fit_batch(payload) -> dict`, one batched model call for a slice of fits. The payload is plain
data (pipeline.runtime.fits.tasks.task_payload): `data` holds X (B, n, p), y (B, n), w (B, n) and
X_new (B, 1, p) for per-country models (B, C, ... for pooled ones), plus `params`,
`quantiles`, `seed`; `fit_batch` returns {"pred": (B, C, H, Q), "state": {name: (B, ...)}}
(or "states": one dict per fit for ragged states) and optionally "alpha": (B, Q).

Imports: pipeline.schema; pipeline.config.study for types only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config.study import StudyConfig


@dataclass(frozen=True)
class Adapter:
    """How the runtime drives one model (see module docstring)."""

    name: str
    version: int  # bump to invalidate every cached fit of this model
    pooled: bool  # one fit pools all countries (panel model)
    params: Callable[[StudyConfig], dict[str, Any]]  # parameters that enter the fit key
    features: Callable[[StudyConfig], list[str]]  # X columns, in order
    min_rows: Callable[[StudyConfig], int]  # complete window rows a fit needs
    fit_batch: Callable[[dict[str, Any]], dict[str, Any]]  # -> {"pred": (B,C,H,Q), ...}
    # lighter parameters for the probe and the factor its time per fit is scaled by
    probe_params: Callable[[dict[str, Any]], tuple[dict[str, Any], float]] | None = None
    # fits one task should batch when a batched call amortizes (see tasks.batched_fits_per_task);
    # the probe measures a task of this size, so its peak RSS is that of a real task
    batch_fits: int = 1
    # a pooled model whose fits train in fixed blocks of origins (dealt round-robin): the size
    # from the study config (it replaces batch_fits in adapter_for, and must be a key
    # parameter, since a block's fits are trained as one batch)
    block_fits: Callable[[StudyConfig], int] | None = None
    # lags of y the panel must hold for this model beyond data.lags (prepare builds them)
    lags: Callable[[StudyConfig], Iterable[int]] | None = None
    # the dataclass of `models.<name>` (built-in models; its fields' metadata declare ranges)
    config_type: type | None = None
    # position in tables and plots (built-ins first, in this order)
    rank: int = 100
    # extra payload entries a worker needs to rebuild this adapter (user models: the target)
    payload: dict[str, Any] | None = None
    # > 1: a batched kernel whose per-fit arithmetic depends only on the fit's position in the
    # batch modulo this period (SIMD alignment); the worker then places each fit at its own
    # slot (in its key), so it gives the same bits in any batch (pipeline/runtime/execute/worker.py)
    slot_period: int = 1


def lag_features(config: StudyConfig, lags: Iterable[int]) -> list[str]:
    """Columns y_lag{l} and <feature>_lag{l} for every lag, target first (the usual X)."""
    from pipeline.schema import lag_column

    names = ["y", *config.data.features]
    lags = list(lags)
    return [lag_column(name, lag) for name in names for lag in lags]
