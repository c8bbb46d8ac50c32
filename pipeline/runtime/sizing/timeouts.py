"""How long one task may run (`runtime.task_timeout_s`, per model `task_timeout_s_by_model`).

A number is used as given. `auto` allows TIMEOUT_FACTOR times the probe's estimate of the task
(fits per task x seconds per fit) and never less than TIMEOUT_FLOOR_S: a generous bound that
only a hung fit reaches. Before any measurement (the probe itself, the user-model check)
`auto` means PROBE_TIMEOUT_S.
"""

from __future__ import annotations

from pipeline.config import RuntimeConfig

TIMEOUT_FACTOR = 10.0
TIMEOUT_FLOOR_S = 120.0
# the probe runs a calibration batch and one task of about runtime.task_seconds
PROBE_TIMEOUT_S = 600.0


def configured(runtime: RuntimeConfig, model: str) -> float | str:
    """The model's own setting, else runtime.task_timeout_s ('auto' or seconds)."""
    return runtime.task_timeout_s_by_model.get(model, runtime.task_timeout_s)


def task_timeout(
    runtime: RuntimeConfig, model: str, seconds_per_fit: float | None, fits_per_task: int
) -> float:
    """Seconds a training task of `model` may run before it is stopped."""
    value = configured(runtime, model)
    if value != "auto":
        return float(value)
    if not seconds_per_fit:
        return PROBE_TIMEOUT_S  # not measured (an old probe file): as generous as the probe
    return max(TIMEOUT_FLOOR_S, TIMEOUT_FACTOR * seconds_per_fit * max(fits_per_task, 1))


def probe_timeout(runtime: RuntimeConfig, model: str) -> float:
    """Seconds the probe (or the user-model check) of `model` may take."""
    value = configured(runtime, model)
    return PROBE_TIMEOUT_S if value == "auto" else float(value)
