"""Check a user model on a tiny slice of the study, in the driver, before any cluster starts.

A user model whose import fails, that raises, whose forecasts have the wrong shape or are NaN
or inf, or whose `from_arrays(to_arrays())` does not predict what it did, stops the run with
a ConfigError naming `models.<name>` (exit code 2) instead of failing every fit on a worker.
The check runs in a worker-like child process (pipeline.runtime.execute.child), so a model that hangs
is stopped after runtime.task_timeout_s (the probe's bound when `auto`) and named the same way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import ConfigError, StudyConfig, UserModelConfig
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.execute.child import Child, ChildError, ChildKilled, shared_child
from pipeline.runtime.fits.fit_groups import FitGroup, build_groups
from pipeline.runtime.fits.tasks import task_payload
from pipeline.runtime.sizing.timeouts import probe_timeout

if TYPE_CHECKING:
    from pipeline.runtime.fits.fit_windows import Panel

log = logging.getLogger("pipeline.check")
SLICE_FITS = 2


def check_user_models(
    config: StudyConfig, panel: Panel, names: list[str] | tuple[str, ...]
) -> None:
    """Run each user model among `names` on SLICE_FITS fits; ConfigError on the first problem."""
    child = shared_child()  # the same child then trains the run's small models
    for name in names:
        entry = config.models.entries.get(name)
        if isinstance(entry, UserModelConfig):
            groups = build_groups(panel, config, adapter_for(config, name))
            check_user_model(config, name, groups, child)


def check_user_model(
    config: StudyConfig, name: str, groups: list[FitGroup], child: Child | None = None
) -> None:
    """The check of one model in `child` (a new one when None), stopped after its timeout."""
    group = next((g for g in groups if len(g)), None)
    if group is None:
        return  # no fit has enough data; train reports an empty model the usual way
    timeout = probe_timeout(config.runtime, name)
    key = f"models.{name}"
    own = child is None
    runner = Child() if child is None else child
    try:
        problem = runner.run(_check_in_child, (config, name, group), timeout)
    except ChildKilled as error:
        if error.reason != "timeout":
            raise ConfigError(key, "a model that checks out on a tiny slice", str(error)) from None
        raise ConfigError(
            key,
            f"a model that fits and predicts a tiny slice of the study ({SLICE_FITS} fits) "
            f"within runtime.task_timeout_s = {timeout:g} s",
            "still running: stopped",
        ) from None
    except ChildError as error:  # not the check's own ConfigError: a bug worth a traceback
        raise RuntimeError(f"checking {key} failed: {error.trace}") from None
    finally:
        if own:
            runner.close()
    if problem is not None:
        raise ConfigError(*problem)
    log.info("models.%s: checked on %d fits of a tiny slice", name, min(SLICE_FITS, len(group)))


def _check_in_child(
    args: tuple[StudyConfig, str, FitGroup],
) -> tuple[str, str, Any] | None:
    """The check itself (in the child): None, or a ConfigError's (key, allowed, given)."""
    config, name, group = args
    try:
        _check(config, name, group)
    except ConfigError as error:
        given = (
            error.given if isinstance(error.given, str | int | float | list) else repr(error.given)
        )
        return error.key, error.allowed, given
    return None


def _check(config: StudyConfig, name: str, group: FitGroup) -> None:
    adapter = adapter_for(config, name)
    index = np.arange(min(SLICE_FITS, len(group)))
    payload = task_payload(
        group,
        index,
        params=adapter.params(config),
        quantiles=config.data.quantiles,
        seed=config.seed,
        extra=adapter.payload,
    )
    key = f"models.{name}"
    try:
        out = adapter.fit_batch(payload)
    except Exception as error:
        raise ConfigError(
            key,
            "a model that fits and predicts a tiny slice of the study",
            f"{type(error).__name__}: {error}",
        ) from None
    pred = np.asarray(out["pred"], dtype=np.float64)
    rows = group.rows[index]
    if not np.isfinite(pred[rows]).all():
        bad = pred[rows][~np.isfinite(pred[rows])][:3].tolist()
        raise ConfigError(key, "finite forecasts (predict returned NaN or inf)", bad)
    _check_round_trip(config, name, payload)


def _check_round_trip(config: StudyConfig, name: str, payload: dict[str, Any]) -> None:
    """An estimator with to_arrays and from_arrays must predict the same after the round trip."""
    from pipeline.models.plugins.user import ESTIMATOR, import_target

    entry = config.models.entries[name]
    spec = payload["user_model"]
    cls = import_target(entry.target, entry.python_path)
    if spec["kind"] != ESTIMATOR or not (
        callable(getattr(cls, "to_arrays", None)) and callable(getattr(cls, "from_arrays", None))
    ):
        return
    d, quantiles = payload["data"], [float(q) for q in payload["quantiles"]]
    live = d["w"][0] > 0
    model = cls(quantiles=quantiles, **entry.params)
    model.fit(d["X"][0][live], d["y"][0][live])
    try:
        restored = cls.from_arrays(model.to_arrays(), quantiles=quantiles, **entry.params)
        same = np.array_equal(
            np.asarray(model.predict(d["X_new"][0])), np.asarray(restored.predict(d["X_new"][0]))
        )
    except Exception as error:
        raise ConfigError(
            f"models.{name}", "from_arrays(to_arrays()) to rebuild the model", repr(error)
        ) from None
    if not same:
        raise ConfigError(
            f"models.{name}",
            "from_arrays(to_arrays()) to predict exactly what the fitted model predicts",
            "different forecasts",
        )
