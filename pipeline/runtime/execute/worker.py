"""The task function workers run (a plain top-level function of plain data).

`run_task(payload)` is what a Dask worker (or the probe's child process) executes: it finds
the model's adapter (pipeline.models.plugins.registry.task_adapter), times the batch, isolates
failures by bisection (a fit that raises does not fail its neighbours) and returns forecasts
and fitted state as plain arrays; the driver writes them to the fit cache
(pipeline/runtime/store/fit_cache.py).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from typing import Any

import numpy as np

from pipeline.models.plugins.registry import task_adapter
from pipeline.models.plugins.spec import Adapter
from pipeline.runtime.sizing.resources import own_peak_mb

log = logging.getLogger("pipeline.worker")


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Fit a batch of fits; return forecasts, fitted state and failures (plain data only: the
    driver writes the cache, so a worker needs no view of the driver's disk).

    Returns keys (fits that succeeded, in payload order), pred (k, C, H, Q), alpha (k, Q) (NaN
    when the model has none), states (k dicts of `state_*` arrays), failed [{key, error_type, message, traceback}], started,
    finished (unix seconds), seconds, peak_mb (the process's peak RSS) and worker.
    """
    started, t0 = time.time(), time.perf_counter()
    adapter = task_adapter(payload)
    n = len(payload["keys"])
    done: list[tuple[np.ndarray, dict[str, Any]]] = []
    failed: list[dict[str, Any]] = []
    _solve(adapter, payload, np.arange(n), done, failed)
    C, H, Q = (
        np.asarray(payload["countries"]).shape[1],
        len(payload["horizons"]),
        len(payload["quantiles"]),
    )
    # per batch of `done`, arrays at once (a per-fit loop with a key search cost O(n^2))
    where, preds, alphas, states = [], [], [], []
    for idx, out in done:
        ok = np.nonzero(np.asarray(out["ok"], dtype=bool))[0]
        where.append(np.asarray(idx)[ok])
        preds.append(np.asarray(out["pred"])[ok])
        alphas.append(
            np.asarray(out["alpha"])[ok] if "alpha" in out else np.full((ok.size, Q), np.nan)
        )
        # state: stacked arrays (B, ...) or, for ragged models, one dict per fit ("states")
        if "states" in out:
            states.extend(
                {f"state_{k}": np.asarray(v) for k, v in out["states"][j].items()} for j in ok
            )
        else:
            stacked = {f"state_{k}": np.asarray(v) for k, v in out.get("state", {}).items()}
            states.extend({k: v[j] for k, v in stacked.items()} for j in ok)
    position = np.concatenate(where) if where else np.empty(0, dtype=np.int64)
    order = np.argsort(position, kind="stable")  # payload order
    keys = [payload["keys"][i] for i in position[order].tolist()]
    return {
        "keys": keys,
        "pred": np.concatenate(preds)[order] if keys else np.empty((0, C, H, Q)),
        "alpha": np.concatenate(alphas)[order] if keys else np.empty((0, Q)),
        "states": [states[i] for i in order.tolist()],
        "failed": failed,
        "started": started,
        "finished": time.time(),
        "seconds": time.perf_counter() - t0,
        "peak_mb": own_peak_mb(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def _subset(payload: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    sub = dict(payload)
    sub["keys"] = [payload["keys"][i] for i in idx]
    sub["countries"] = payload["countries"][idx]
    sub["rows"] = payload["rows"][idx]
    sub["origins"] = payload["origins"][idx]
    sub["data"] = {k: v[idx] for k, v in payload["data"].items()}
    if payload.get("slots") is not None:
        sub["slots"] = [payload["slots"][i] for i in idx]
    return sub


def _fit_slotted(adapter: Adapter, payload: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    """One batched call over the fits `idx`. With slots (adapter.slot_period > 1), each fit
    sits at a batch position congruent to its slot, filler copies of the next fit taking the
    gaps, so its arithmetic is the same whichever fits share the batch (a full task, a
    bisected half, a retry alone, a resume): one key, one result."""
    slots = payload.get("slots")
    period = int(getattr(adapter, "slot_period", 1))
    if slots is None or period <= 1:
        return adapter.fit_batch(_subset(payload, idx))
    layout: list[int] = []  # payload positions, fillers included
    real: list[int] = []  # where in `layout` each fit of `idx` sits
    for i in idx:
        while len(layout) % period != slots[i] % period:
            layout.append(int(i))
        real.append(len(layout))
        layout.append(int(i))
    out = adapter.fit_batch(_subset(payload, np.asarray(layout)))
    pick = np.asarray(real)
    taken: dict[str, Any] = {}
    for name, value in out.items():
        if name == "state":
            taken[name] = {k: np.asarray(v)[pick] for k, v in value.items()}
        elif name == "states":
            taken[name] = [value[j] for j in pick]
        else:
            taken[name] = np.asarray(value)[pick]
    return taken


def _solve(
    adapter: Adapter,
    payload: dict[str, Any],
    idx: np.ndarray,
    done: list[tuple[np.ndarray, dict[str, Any]]],
    failed: list[dict[str, Any]],
) -> None:
    """One batched call; on an exception split the batch in halves until the bad fits are alone
    (a fixed block, `payload["blocked"]`, fails whole instead)."""
    try:
        out = _fit_slotted(adapter, payload, idx)
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
    if len(idx) > 1 and payload.get("blocked"):
        # a block trains as one batch or not at all: its fits fail together (and are retried
        # together, pipeline.runtime.fits.tasks.block_task), so no fit gets bits of a partial block
        error_type = "memory" if isinstance(error, MemoryError) else type(error).__name__
        log.warning(
            "block of %d fits of %s failed: %s: %s", len(idx), adapter.name, error_type, error
        )
        message = f"in its block of {len(idx)} fits: {error}"[:2000]
        failed.extend(
            {"key": payload["keys"][i], "error_type": error_type, "message": message,
             "traceback": trace}
            for i in idx
        )  # fmt: skip
        return
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
