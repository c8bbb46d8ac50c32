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
from pipeline.runtime.fits.tasks import with_data
from pipeline.runtime.sizing.resources import own_peak_mb
from pipeline.runtime.store.shard_format import stored_arrays
from pipeline.runtime.store.shard_pack import encode_arrays, unpack

log = logging.getLogger("pipeline.worker")


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Fit a batch of fits; return forecasts, fitted state and failures (plain data only: the
    driver writes the cache, so a worker needs no view of the driver's disk).

    The payload's `keys`, where it has them, are the fits' raw 32-byte content keys, (n,) S32
    (or any sequence of str); train's payloads have none (the driver binds its keys to the
    shard's checksums). The result names fits by position in the payload, not by key (the
    driver knows what it sent): index (int64 positions of the fits that succeeded,
    ascending), pred (k, C, H, Q), alpha (k, Q) (NaN when the model has none), the fitted
    state as `state` ({"state_<name>": (k, ...)}) or, when it does not stack, `states` (k
    dicts of `state_*` arrays; see fit_states), failed [{index, key (hex, when the payload
    has keys), error_type, message, traceback}], started, finished (unix seconds), seconds,
    peak_mb (the process's peak RSS) and worker. With the payload's `shard_block` (train's
    tasks), `shard` instead of pred, alpha and state, and of index where every fit
    succeeded: the fit-cache shard of the fits in `index`, encoded here (shard_bytes;
    shard_arrays reads them back).
    """
    started, t0 = time.time(), time.perf_counter()
    payload = with_data(payload)  # a compact payload's windows, built here
    adapter = task_adapter(payload)
    n = len(payload["rows"])
    done: list[tuple[np.ndarray, dict[str, Any]]] = []
    failed: list[dict[str, Any]] = []
    _solve(adapter, payload, np.arange(n), done, failed)
    C, H, Q = (
        np.asarray(payload["countries"]).shape[1],
        len(payload["horizons"]),
        len(payload["quantiles"]),
    )
    # per batch of `done`, arrays at once (a per-fit loop with a key search cost O(n^2))
    where, preds, alphas = [], [], []
    parts: list[dict[str, np.ndarray] | list[dict[str, np.ndarray]]] = []  # state per batch
    for idx, out in done:
        ok = np.nonzero(np.asarray(out["ok"], dtype=bool))[0]
        where.append(np.asarray(idx)[ok])
        preds.append(np.asarray(out["pred"])[ok])
        alphas.append(
            np.asarray(out["alpha"])[ok] if "alpha" in out else np.full((ok.size, Q), np.nan)
        )
        # state: stacked arrays (B, ...) or, for ragged models, one dict per fit ("states")
        if "states" in out:
            parts.append(
                [{f"state_{k}": np.asarray(v) for k, v in out["states"][j].items()} for j in ok]
            )
        else:
            parts.append({f"state_{k}": np.asarray(v)[ok] for k, v in out.get("state", {}).items()})
    position = np.concatenate(where) if where else np.empty(0, dtype=np.int64)
    order = np.argsort(position, kind="stable")  # payload order
    index = position[order].astype(np.int64)
    result: dict[str, Any] = {
        "index": index,
        "pred": np.concatenate(preds)[order] if index.size else np.empty((0, C, H, Q)),
        "alpha": np.concatenate(alphas)[order] if index.size else np.empty((0, Q)),
        "failed": failed,
    }
    # the state goes back stacked when it stacks: one array per name pickles in microseconds,
    # thousands of per-fit dicts of small arrays cost the driver ~10 us per fit to unpickle
    state = _stack_parts(parts)
    if state is not None:
        result["state"] = {k: v[order] for k, v in state.items()}
    else:
        sizes = [w.size for w in where]
        per_fit = [s for part, n in zip(parts, sizes, strict=True) for s in _per_fit(part, n)]
        result["states"] = [per_fit[i] for i in order.tolist()]
    shard = shard_bytes(payload, result)
    if shard is not None:  # the forecasts and states travel once, in the shard (shard_arrays)
        result["shard"] = shard
        del result["pred"], result["alpha"], result["state"]
        if index.size == n:  # every fit succeeded: positions 0..n-1, made again by the driver
            del result["index"]
    result.update(
        started=started,
        finished=time.time(),
        seconds=time.perf_counter() - t0,
        peak_mb=own_peak_mb(),
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
    return result


def shard_bytes(payload: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
    """The fit-cache shard of the result's fits, encoded without their keys (plain data:
    shard_pack.encode_arrays, `shard_block` entries per checksum) from the same arrays the
    driver's RunState would write: pred, alpha, the fits' countries (str: stored as codes)
    and rows, then the stacked state. None when the payload asks for none (the probe's
    tasks), no fit succeeded or the state does not stack: the driver then encodes the shard
    itself from the result.

    Made here because encoding (a sha256 per block over every array, the npz) was most of what
    a result cost the driver, which runs serially while the workers run side by side; the
    driver binds its own keys to the digests and writes the files (run_task then leaves
    pred, alpha and state out of the result: the driver reads them from the npz,
    shard_arrays)."""
    block = payload.get("shard_block")
    index = result["index"]
    if not block or not index.size or "state" not in result:
        return None
    arrays = {
        "pred": np.asarray(result["pred"]),
        "alpha": np.asarray(result["alpha"]),
        # str: stored as codes, read back as wide as these fits' longest (shard_pack.pack)
        "countries": np.asarray(payload["countries"])[index],
        "rows": np.asarray(np.asarray(payload["rows"])[index], dtype=bool),
        **result["state"],
    }
    return encode_arrays(arrays, int(block))


def shard_arrays(result: dict[str, Any]) -> dict[str, Any]:
    """A result whose forecasts travel in its shard (run_task with a `shard_block`) with
    `pred`, `alpha` and `state` read back from the shard's npz (and `index`, 0..n-1, where
    every fit succeeded); any other result as it is."""
    if "pred" in result or "shard" not in result:
        return result
    # views of the result's bytes, not copies (the driver keeps them as its forecasts:
    # KeptForecasts); an all-NaN alpha (rw's) is not in the npz, only named in its layout
    shard = result["shard"]
    nan, codes = shard["layout"]["nan"], shard["layout"]["codes"]
    names = [nm for nm in shard["names"] if nm in ("pred", "alpha") or nm.startswith("state_")]
    stored = stored_arrays(shard["npz"], [nm for nm in names if nm not in nan])
    n = stored["pred"].shape[0]
    mine = {
        "nan": {k: nan[k] for k in names if k in nan},
        "codes": {k: codes[k] for k in names if k in codes},
    }
    arrays = unpack(stored, n, mine, nan_views=True)  # kept: no NaN alpha per fit
    index = result["index"] if "index" in result else np.arange(n, dtype=np.int64)
    if any(a.shape[0] != len(index) for a in arrays.values()) or len(arrays) != len(names):
        raise ValueError("a task's shard holds other fits than its result names")
    state = {nm: arrays[nm] for nm in names if nm.startswith("state_")}
    return {
        **result,
        "index": index,
        "pred": arrays["pred"],
        "alpha": arrays["alpha"],
        "state": state,
    }


def fit_states(result: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """One dict of `state_*` arrays per fit of a `run_task` result, in the order of its index."""
    if "states" in result:
        return list(result["states"])
    return _per_fit(result["state"], len(result["index"]))


def key_hex(keys: Any, i: int) -> str:
    """Fit `i`'s content key as hex: `keys` raw digests ((n,) S32) or a sequence of str."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
        return keys[i : i + 1].tobytes().hex()  # a slice: an element drops trailing zeros
    return str(keys[i])


def _failure(payload: dict[str, Any], i: int, error_type: str, message: str, trace: str) -> dict:
    """A failure of fit `i`; its key only where the payload has keys (the driver adds them to
    a train task's failures: RunState.record_result)."""
    keys = {"key": key_hex(payload["keys"], i)} if "keys" in payload else {}
    return {
        "index": int(i),
        **keys,
        "error_type": error_type,
        "message": message,
        "traceback": trace,
    }


def _named(failure: dict[str, Any]) -> str:
    """A failed fit as a log names it: its key's first 12 hex digits, or its position."""
    return failure["key"][:12] if "key" in failure else f"#{failure['index']}"


def _per_fit(
    part: dict[str, np.ndarray] | list[dict[str, np.ndarray]], n: int
) -> list[dict[str, np.ndarray]]:
    if isinstance(part, list):
        return part
    return [{k: v[j] for k, v in part.items()} for j in range(n)]


def _stack_parts(
    parts: list[dict[str, np.ndarray] | list[dict[str, np.ndarray]]],
) -> dict[str, np.ndarray] | None:
    """The batches' stacked states as one array per name; None when a batch is ragged or the
    batches differ in names, dtypes or per-fit shapes."""
    if any(isinstance(p, list) for p in parts):
        return None
    stacked = [p for p in parts if isinstance(p, dict)]
    if not stacked:
        return {}
    names = set(stacked[0])
    if any(set(p) != names for p in stacked):
        return None
    out = {}
    for name in sorted(names):
        arrays = [p[name] for p in stacked]
        if len({(a.dtype.str, a.shape[1:]) for a in arrays}) != 1:
            return None
        out[name] = np.concatenate(arrays)
    return out


def _subset(payload: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    sub = dict(payload)
    keys = payload.get("keys")
    if keys is not None:
        sub["keys"] = keys[idx] if isinstance(keys, np.ndarray) else [keys[i] for i in idx]
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
        # (its existing rows only: a padding row may hold anything), for the batch at once
        finite = ~(~np.isfinite(pred) & rows[:, :, None, None]).any(axis=(1, 2, 3))
        done.append((idx, {**out, "pred": pred, "ok": finite}))
        for j in np.nonzero(~finite)[0]:
            message = f"{adapter.name}: non-finite forecast {pred[j][rows[j]].ravel().tolist()}"
            f = _failure(payload, idx[j], "FloatingPointError", message[:2000], "")
            f["traceback"] = f"FloatingPointError: {message}"
            log.warning(
                "fit %s of %s failed: FloatingPointError: %s", _named(f), adapter.name, message
            )
            failed.append(f)
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
        failed.extend(_failure(payload, i, error_type, message, trace) for i in idx)
        return
    if len(idx) > 1:
        half = len(idx) // 2
        _solve(adapter, payload, idx[:half], done, failed)
        _solve(adapter, payload, idx[half:], done, failed)
        return
    error_type = "memory" if isinstance(error, MemoryError) else type(error).__name__
    f = _failure(payload, idx[0], error_type, str(error)[:2000], trace)
    log.warning("fit %s of %s failed: %s: %s", _named(f), adapter.name, error_type, error)
    failed.append(f)
