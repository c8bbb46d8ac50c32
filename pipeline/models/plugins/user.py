"""User models by configuration: `models.<name>: {_target_: pkg.module.Object, ...}`.

Two contracts (docs/MODELS.md):

- estimator: a class, `Object(quantiles, **params)`, `fit(X, y) -> self`, `predict(X) -> (m, Q)`;
  optional `to_arrays() -> {name: array}` (the fitted state the fit cache keeps, no pickle) and
  classmethod `from_arrays(arrays, quantiles, **params)`. One task runs a loop over its fits.
- batched: a function, `Object(X, y, w, X_new, quantiles, **params) -> (B, m, Q)` with X
  (B, n, p), y (B, n), w (B, n) (0 = a padding row, its X and y are 0), X_new (B, m, p).

Either way a fit sees one country's window: X the columns y_lag0..., <feature>_lag... for
`[0, *data.lags]`, y the target at the fit's horizon. Forecasts are sorted along the
quantile axis (non-crossing rearrangement) and the crossing rate before sorting is kept.
`models.<name>.python_path` (optional) is a directory put on sys.path of the driver and of
every worker (the payload carries it) before the target is imported.

Imports: plugins.spec, solvers.common and pipeline.errors; the config for types only.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.models.plugins.spec import Adapter, lag_features
from pipeline.models.solvers.common import crossing_rate_batch, rearrange_quantiles

if TYPE_CHECKING:
    from pipeline.config.study import StudyConfig, UserModelConfig

log = logging.getLogger("pipeline.models")
ESTIMATOR, BATCHED = "estimator", "batched"
EXTRA_ROWS = 2  # complete rows a fit needs beyond its number of features


def import_target(target: str, python_path: str | None = None) -> Any:
    """The object at import path `target` (module.attr...), after putting python_path on sys.path."""
    if python_path:
        directory = str(Path(python_path).resolve())
        if directory not in sys.path:
            sys.path.insert(0, directory)
    module_name, _, attr = target.rpartition(".")
    module = importlib.import_module(module_name)
    return functools.reduce(getattr, attr.split("."), module)


def contract_of(obj: Any) -> str:
    """ESTIMATOR for a class with fit and predict, BATCHED for a function; else TypeError."""
    if inspect.isclass(obj):
        missing = [m for m in ("fit", "predict") if not callable(getattr(obj, m, None))]
        if missing:
            raise TypeError(f"the class has no {' / '.join(missing)} method")
        return ESTIMATOR
    if callable(obj):
        return BATCHED
    raise TypeError(f"{type(obj).__name__} is neither a class nor a function")


@functools.cache
def _resolve(name: str, target: str, python_path: str | None) -> tuple[Any, str]:
    try:
        obj = import_target(target, python_path)
        kind = contract_of(obj)
    except Exception as error:  # any import-time failure of user code is a config problem
        raise ConfigError(
            f"models.{name}._target_",
            "an importable estimator class or batched function (module on sys.path, or set "
            f"models.{name}.python_path)",
            f"{target} ({type(error).__name__}: {error})",
        ) from None
    if kind == ESTIMATOR and not callable(getattr(obj, "to_arrays", None)):
        log.info(
            "models.%s: %s has no to_arrays(): the fit cache keeps its forecasts only",
            name,
            target,
        )
    return obj, kind


def user_adapter(name: str, entry: UserModelConfig) -> Adapter:
    """The adapter of a user model (imports its target; ConfigError when that fails)."""
    python_path, params = entry.python_path, dict(entry.params)
    _, kind = _resolve(name, entry.target, python_path)
    sys_path = [str(Path(python_path).resolve())] if python_path else []
    return Adapter(
        name=name,
        version=entry.version,
        pooled=False,
        # the key: import path, parameters (version enters the key on its own)
        params=lambda c: {"target": entry.target, "params": params, "lags": list(c.data.lags)},
        features=_features,
        min_rows=lambda c: len(_features(c)) + EXTRA_ROWS,
        fit_batch=functools.partial(_fit, name, entry.target, python_path, kind),
        payload={"user_model": {"target": entry.target, "kind": kind, "sys_path": sys_path}},
    )


def adapter_from_payload(payload: dict[str, Any]) -> Adapter:
    """A worker's adapter for a user model task: only name and fit_batch are used there."""
    spec = payload["user_model"]
    python_path = spec["sys_path"][0] if spec["sys_path"] else None
    name = payload["model"]
    return Adapter(
        name=name,
        version=0,
        pooled=False,
        params=lambda c: {},
        features=lambda c: [],
        min_rows=lambda c: 0,
        fit_batch=functools.partial(_fit, name, spec["target"], python_path, spec["kind"]),
    )


def _features(config: StudyConfig) -> list[str]:
    return lag_features(config, [0, *config.data.lags])


def _fit(
    name: str, target: str, python_path: str | None, kind: str, payload: dict[str, Any]
) -> dict[str, Any]:
    obj, _ = _resolve(name, target, python_path)
    d, quantiles = payload["data"], [float(q) for q in payload["quantiles"]]
    params = dict(payload["params"]["params"])
    w = np.asarray(d["w"], dtype=np.float64)
    live = w > 0
    X = np.where(live[..., None], d["X"], 0.0)
    y = np.where(live, d["y"], 0.0)
    X_new = np.asarray(d["X_new"], dtype=np.float64)
    B, m, Q = X_new.shape[0], X_new.shape[1], len(quantiles)
    if kind == BATCHED:
        raw = _checked(name, obj(X, y, w, X_new, quantiles, **params), (B, m, Q))
        states: list[dict[str, Any]] = [{} for _ in range(B)]
    else:
        preds, states = [], []
        for b in range(B):  # one task, many fits: a loop, not a task per fit
            model = obj(quantiles=quantiles, **params)
            model.fit(X[b][live[b]], y[b][live[b]])
            preds.append(_checked(name, model.predict(X_new[b]), (m, Q)))
            states.append(_state(name, model))
        raw = np.stack(preds) if preds else np.empty((0, m, Q))
    with np.errstate(invalid="ignore"):  # a non-finite forecast fails its fit, just below
        crossing = crossing_rate_batch(raw)
    for b in range(B):
        states[b]["crossing"] = np.asarray(crossing[b])
    return {"pred": rearrange_quantiles(raw)[:, :, None, :], "states": states}


def _checked(name: str, pred: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        out = np.asarray(pred, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"models.{name}: predict returned no numeric array ({error})") from None
    if out.shape != shape:
        raise ValueError(f"models.{name}: predict returned shape {out.shape}, expected {shape}")
    return out


def _state(name: str, model: Any) -> dict[str, np.ndarray]:
    if not callable(getattr(model, "to_arrays", None)):
        return {}
    arrays = model.to_arrays()
    if not isinstance(arrays, dict):
        raise ValueError(f"models.{name}: to_arrays() must return a dict of arrays")
    out = {}
    for key, value in arrays.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f"models.{name}: to_arrays()[{key!r}] is not a numeric array")
        out[str(key)] = array
    return out
