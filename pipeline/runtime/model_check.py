"""Check a user model on a tiny slice of the study, in the driver, before any cluster starts.

A user model whose import fails, that raises, whose forecasts have the wrong shape or are NaN
or inf, or whose `from_arrays(to_arrays())` does not predict what it did, stops the run with
a ConfigError naming `models.<name>` (exit code 2) instead of failing every fit on a worker.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import ConfigError, StudyConfig, UserModelConfig
from pipeline.models.registry import adapter_for
from pipeline.runtime.fit_groups import FitGroup, build_groups
from pipeline.runtime.tasks import task_payload

log = logging.getLogger("pipeline.check")
SLICE_FITS = 2


def check_user_models(
    config: StudyConfig, panel: pd.DataFrame, names: list[str] | tuple[str, ...]
) -> None:
    """Run each user model among `names` on SLICE_FITS fits; ConfigError on the first problem."""
    for name in names:
        entry = config.models.entries.get(name)
        if isinstance(entry, UserModelConfig):
            check_user_model(config, name, build_groups(panel, config, adapter_for(config, name)))


def check_user_model(config: StudyConfig, name: str, groups: list[FitGroup]) -> None:
    adapter = adapter_for(config, name)
    group = next((g for g in groups if len(g)), None)
    if group is None:
        return  # no fit has enough data; train reports an empty model the usual way
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
    log.info("models.%s: checked on %d fits of a tiny slice", name, len(index))


def _check_round_trip(config: StudyConfig, name: str, payload: dict[str, Any]) -> None:
    """An estimator with to_arrays and from_arrays must predict the same after the round trip."""
    from pipeline.models.user import ESTIMATOR, import_target

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
