"""Model adapters and the task function workers run (plain top-level functions of plain data).

An `Adapter` tells the runtime, for one model: its key parameters, the panel columns a fit
reads, whether a fit pools every country, and `fit_batch(payload) -> dict`, one batched
model call for a slice of fits. `run_task(payload)` is what a Dask worker (or the probe's
child process) executes: it times the batch, isolates failures by bisection (a fit that
raises does not fail its neighbours), writes each successful fit's arrays and forecasts
atomically to the model cache under its content key, and returns small plain results.

Test-only models: `register(adapter)` adds one at runtime; the environment variable
`PIPELINE_EXTRA_ADAPTERS` (comma-separated module names or .py paths) names modules that call
`register` on import, so worker processes (which inherit the environment) see them too.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import resource
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import StudyConfig
from pipeline.io import write_npz
from pipeline.schema import lag_column

log = logging.getLogger("pipeline.worker")
EXTRA_ADAPTERS_ENV = "PIPELINE_EXTRA_ADAPTERS"


@dataclass(frozen=True)
class Adapter:
    """How the runtime drives one model (see module docstring)."""

    name: str
    version: int  # bump to invalidate every cached fit of this model
    pooled: bool  # one fit pools all countries (panel model)
    params: Callable[[StudyConfig], dict[str, Any]]  # parameters that enter the fit key
    features: Callable[[StudyConfig], list[str]]  # X columns, in order
    min_rows: Callable[[StudyConfig], int]  # complete window rows a fit needs
    fit_batch: Callable[[dict[str, Any]], dict[str, Any]]  # -> {"pred": (B,C,H,Q), "state": {...}}
    # lighter parameters for the probe and the factor its time per fit is scaled by
    probe_params: Callable[[dict[str, Any]], tuple[dict[str, Any], float]] | None = None
    # fits one task should batch when a batched call amortizes (see tasks.batched_fits_per_task);
    # the probe measures a task of this size, so its peak RSS is that of a real task
    batch_fits: int = 1


_REGISTRY: dict[str, Adapter] = {}
_LOADED_EXTRA: set[str] = set()


def register(adapter: Adapter) -> None:
    """Add (or replace) an adapter by name."""
    _REGISTRY[adapter.name] = adapter


def get_adapter(name: str) -> Adapter:
    """The adapter of `name`, loading modules named in PIPELINE_EXTRA_ADAPTERS on first miss."""
    if name not in _REGISTRY:
        _load_extra()
    if name not in _REGISTRY:
        raise ValueError(f"model must be one of {sorted(_REGISTRY)}; got {name!r}")
    return _REGISTRY[name]


def _load_extra() -> None:
    for spec in filter(
        None, (s.strip() for s in os.environ.get(EXTRA_ADAPTERS_ENV, "").split(","))
    ):
        if spec in _LOADED_EXTRA:
            continue
        _LOADED_EXTRA.add(spec)
        if spec.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(spec).stem, spec)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)


# --- the task function ----------------------------------------------------------------------


def cache_path(cache_dir: str | Path, model: str, key: str) -> Path:
    """Where the fit with content `key` lives in the model cache."""
    return Path(cache_dir) / model / key[:2] / f"{key}.npz"


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Fit a batch of fits, cache each success, return forecasts and failures (plain data).

    Returns keys (fits that succeeded, in payload order), pred (k, C, H, Q), alpha (k, Q) (NaN
    when the model has none), failed [{key, error_type, message, traceback}], started,
    finished (unix seconds), seconds, peak_mb (the process's peak RSS) and worker.
    """
    started, t0 = time.time(), time.perf_counter()
    adapter = get_adapter(payload["model"])
    n = len(payload["keys"])
    done: list[tuple[np.ndarray, dict[str, Any]]] = []
    failed: list[dict[str, Any]] = []
    _solve(adapter, payload, np.arange(n), done, failed)
    keys, preds, alphas = [], [], []
    for idx, out in done:
        for j, i in enumerate(idx):
            if not out["ok"][j]:
                continue
            key = payload["keys"][i]
            # state: stacked arrays (B, ...) or, for ragged models, one dict per fit ("states")
            fit_state = (
                out["states"][j]
                if "states" in out
                else {k: v[j] for k, v in out.get("state", {}).items()}
            )
            state = {f"state_{k}": np.asarray(v) for k, v in fit_state.items()}
            alpha = (
                np.asarray(out["alpha"][j])
                if "alpha" in out
                else np.full(len(payload["quantiles"]), np.nan)
            )
            write_npz(
                cache_path(payload["cache_dir"], payload["model"], key),
                {
                    "pred": out["pred"][j],
                    "alpha": alpha,
                    "countries": np.asarray(payload["countries"][i], dtype=str),
                    "rows": np.asarray(payload["rows"][i], dtype=bool),
                    **state,
                },
            )
            keys.append(key)
            preds.append(out["pred"][j])
            alphas.append(alpha)
    order = np.argsort([payload["keys"].index(k) for k in keys], kind="stable")
    C, H, Q = (
        np.asarray(payload["countries"]).shape[1],
        len(payload["horizons"]),
        len(payload["quantiles"]),
    )
    return {
        "keys": [keys[i] for i in order],
        "pred": np.stack([preds[i] for i in order]) if keys else np.empty((0, C, H, Q)),
        "alpha": np.stack([alphas[i] for i in order]) if keys else np.empty((0, Q)),
        "failed": failed,
        "started": started,
        "finished": time.time(),
        "seconds": time.perf_counter() - t0,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def _subset(payload: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    sub = dict(payload)
    sub["keys"] = [payload["keys"][i] for i in idx]
    sub["countries"] = payload["countries"][idx]
    sub["rows"] = payload["rows"][idx]
    sub["origins"] = payload["origins"][idx]
    sub["data"] = {k: v[idx] for k, v in payload["data"].items()}
    return sub


def _solve(
    adapter: Adapter,
    payload: dict[str, Any],
    idx: np.ndarray,
    done: list[tuple[np.ndarray, dict[str, Any]]],
    failed: list[dict[str, Any]],
) -> None:
    """One batched call; on an exception split the batch in halves until the bad fits are alone."""
    try:
        out = adapter.fit_batch(_subset(payload, idx))
        pred = np.asarray(out["pred"], dtype=np.float64)
        rows = payload["rows"][idx]
        want = (len(idx), rows.shape[1], len(payload["horizons"]), len(payload["quantiles"]))
        if pred.shape != want:
            raise ValueError(
                f"{adapter.name}: prediction shape {pred.shape} is not (B, C, H, Q) = {want}"
            )
    except Exception as exc:
        error, trace = exc, traceback.format_exc()
    else:
        # fits in one batched call are independent: a non-finite forecast fails only its fit
        finite = np.array(
            [np.isfinite(pred[j][rows[j]]).all() for j in range(len(idx))], dtype=bool
        )
        done.append((idx, {**out, "pred": pred, "ok": finite}))
        for j in np.nonzero(~finite)[0]:
            key = payload["keys"][idx[j]]
            message = f"{adapter.name}: non-finite forecast {pred[j][rows[j]].ravel().tolist()}"
            log.warning(
                "fit %s of %s failed: FloatingPointError: %s", key[:12], adapter.name, message
            )
            failed.append(
                {
                    "key": key,
                    "error_type": "FloatingPointError",
                    "message": message[:2000],
                    "traceback": f"FloatingPointError: {message}",
                }
            )
        return
    # outside the except block, so a bisected failure's traceback is not chained to its parents'
    if len(idx) > 1:
        half = len(idx) // 2
        _solve(adapter, payload, idx[:half], done, failed)
        _solve(adapter, payload, idx[half:], done, failed)
        return
    key = payload["keys"][idx[0]]
    error_type = "memory" if isinstance(error, MemoryError) else type(error).__name__
    log.warning("fit %s of %s failed: %s: %s", key[:12], adapter.name, error_type, error)
    failed.append(
        {"key": key, "error_type": error_type, "message": str(error)[:2000], "traceback": trace}
    )


# --- the real models ------------------------------------------------------------------------


def _lag_features(config: StudyConfig, lags: list[int]) -> list[str]:
    names = ["y", *config.data.features]
    return [lag_column(name, lag) for name in names for lag in lags]


def _ar_qr_fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.ar_qr import fit_predict_ar_qr_batch

    d = payload["data"]
    pred, crossing, coef = fit_predict_ar_qr_batch(
        d["X"], d["y"], d["X_new"], payload["quantiles"], w=d["w"]
    )
    return {"pred": np.asarray(pred)[:, :, None, :], "state": {"coef": coef, "crossing": crossing}}


def _lqr_fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.lqr import fit_predict_lqr_batch

    d, p = payload["data"], payload["params"]
    res = fit_predict_lqr_batch(
        d["X"],
        d["y"],
        d["X_new"],
        quantiles=payload["quantiles"],
        alphas=p["alphas"],
        solver=p["solver"],
        rff_features=p["rff_features"],
        rff_bandwidth="median" if p["rff_bandwidth"] == "auto" else float(p["rff_bandwidth"]),
        validation_size=p["validation_size"],
        penalize_first_lag=p["penalize_first_lag"],
        seed=payload["seed"],
        w=d["w"],
    )
    state = {k: np.asarray(v) for k, v in res.state.items()}
    state["crossing"] = np.asarray(res.crossing)
    return {
        "pred": np.asarray(res.pred)[:, :, None, :],
        "alpha": np.asarray(res.alpha),
        "state": state,
    }


register(
    Adapter(
        name="ar_qr",
        version=1,
        pooled=False,
        params=lambda c: {"p": c.models.ar_qr.p},
        features=lambda c: [lag_column("y", lag) for lag in range(c.models.ar_qr.p)],
        min_rows=lambda c: c.models.ar_qr.p + 2,
        fit_batch=_ar_qr_fit,
    )
)

register(
    Adapter(
        name="lqr",
        version=1,
        pooled=False,
        params=lambda c: {
            "alphas": [float(a) for a in c.models.lqr.alphas],
            "solver": c.models.lqr.solver,
            "rff_features": c.models.lqr.rff_features,
            "rff_bandwidth": c.models.lqr.rff_bandwidth,
            "validation_size": c.models.lqr.validation_size,
            "penalize_first_lag": c.models.lqr.penalize_first_lag,
            "lags": list(c.data.lags),
        },
        features=lambda c: _lag_features(c, [0, *c.data.lags]),
        min_rows=lambda c: c.models.lqr.validation_size + 2,
        fit_batch=_lqr_fit,
    )
)


def _ensemble_fit(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.ensemble_nn import WindowData, fit_predict_ensemble_windows

    d, p = payload["data"], payload["params"]
    rows = np.asarray(payload["rows"], dtype=bool)
    B, C = rows.shape
    H, Q = len(payload["horizons"]), len(payload["quantiles"])
    windows, new_rows = [], []
    for b in range(B):
        ci, ti = np.nonzero(d["w"][b] > 0)  # complete rows of every country, in time order
        new = np.nonzero(rows[b])[0]
        new_rows.append(new)
        windows.append(
            WindowData(
                X=d["X"][b][ci, ti],
                y=d["y"][b][ci, ti],
                country=ci,
                X_new=d["X_new"][b][new],
                country_new=new,
                time=ti,
            )
        )
    results = fit_predict_ensemble_windows(
        windows,
        units_per_layer=p["units_per_layer"],
        learning_rate=p["learning_rate"],
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        patience=p["patience"],
        parallel_models=p["parallel_models"],
        quantiles=payload["quantiles"],
        seed=payload["seed"],
        device=p.get("device", "auto"),
        scale=p["scale"],
    )
    pred = np.full((B, C, H, Q), np.nan)
    states = []
    for b, res in enumerate(results):
        pred[b, new_rows[b]] = np.asarray(res.pred).reshape(len(new_rows[b]), H, Q)
        states.append({**res.state, "epochs": res.epochs})
    return {"pred": pred, "states": states}


# Origins one ensemble_nn task trains as one batched network. Members of a window stop at
# different epochs; batching windows fills the steps where few members are still training.
# CPU s per window at seed settings (benchmarks/README.md "ensemble_nn"): 16.6 (G = 1),
# 6.7 (4), 5.7 (8), 4.0 (18), 3.1 (36); 36 = the seed's 72 origins over 2 workers.
ENSEMBLE_BATCH_FITS = 36
PROBE_EPOCHS = 3
# Early stopping: a batch's cost tracks its member-epochs (stopped members leave the batch), so
# the probe's all-members epochs are scaled to the mean epochs a member runs, in units of
# `patience`: 2.9 x patience on the seed (member epochs median 122, mean 145, max 875 with
# patience 50 and 1500 allowed; seed run of issue 8), not `epochs`, which overestimated ~10x.
EARLY_STOP_PATIENCES = 3.0


def _ensemble_probe(params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Probe with PROBE_EPOCHS epochs (no early stop) and scale the time per fit to the
    epochs a member really runs with early stopping (EARLY_STOP_PATIENCES x patience, at most
    `epochs`)."""
    epochs = min(int(params["epochs"]), PROBE_EPOCHS)
    expected = min(float(params["epochs"]), EARLY_STOP_PATIENCES * float(params["patience"]))
    return {**params, "epochs": epochs}, max(expected, epochs) / epochs


register(
    Adapter(
        name="ensemble_nn",
        version=1,
        pooled=True,
        params=lambda c: {
            "units_per_layer": list(c.models.ensemble_nn.units_per_layer),
            "learning_rate": c.models.ensemble_nn.learning_rate,
            "epochs": c.models.ensemble_nn.epochs,
            "batch_size": c.models.ensemble_nn.batch_size,
            "patience": c.models.ensemble_nn.patience,
            "parallel_models": c.models.ensemble_nn.parallel_models,
            "scale": c.data.scale,
            "lags": list(c.data.lags),
        },
        features=lambda c: _lag_features(c, [0, *c.data.lags]),
        min_rows=lambda c: 12,
        fit_batch=_ensemble_fit,
        probe_params=_ensemble_probe,
        batch_fits=ENSEMBLE_BATCH_FITS,
    )
)
