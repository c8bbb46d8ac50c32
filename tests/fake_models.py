"""Test-only model adapters, loaded through PIPELINE_EXTRA_ADAPTERS (never by the package).

fake_quantile: per-country empirical quantiles of the window's targets (exact, batch-independent);
               NaN forecasts for the countries in FAKE_NAN_COUNTRIES.
fake_fail:     the same, but raises for fits of the countries in FAKE_FAIL_COUNTRIES.
fake_hog:      the same, but a fit of a country in FAKE_HOG_COUNTRIES (at origin month index
               FAKE_HOG_ORIGIN when set) allocates FAKE_HOG_MB MiB
               (touched page by page, slowly enough for the nanny's memory monitor to see it);
               with FAKE_HOG_SIGKILL set, such a fit SIGKILLs its worker instead.
fake_hang:     the same, but a fit of a country in FAKE_HANG_COUNTRIES (at origin month index
               FAKE_HANG_ORIGIN when set) never returns (it sleeps for an hour, or for
               FAKE_HANG_S seconds when set: one slow task); with FAKE_HANG_MARK set, it
               first writes its pid to that file; with FAKE_HANG_GIL set, it hangs in one C
               call that holds the GIL (its worker's heartbeats stop) instead of sleeping.
slow_ar_qr:    the real ar_qr, slowed down by FAKE_SLEEP; FAKE_FAIL_ONCE_ORIGIN/_MARKER make
               one origin's fits fail through bisection and succeed when retried alone.
FAKE_SLEEP (seconds per fit) slows every model down so tests can interrupt a run midway.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.plugins.registry import register
from pipeline.models.plugins.spec import Adapter
from pipeline.schema import lag_column

CALLS = {"fit_batch": 0}  # batched calls made in this process


def _quantiles(payload: dict[str, Any]) -> dict[str, Any]:
    CALLS["fit_batch"] += 1
    d = payload["data"]
    y = np.where(d["w"] > 0, d["y"], np.nan)  # (B, n)
    q = np.asarray(payload["quantiles"])
    pred = np.nanquantile(y, q, axis=1).T  # (B, Q)
    nan = np.isin(_countries(payload), sorted(_env_set("FAKE_NAN_COUNTRIES")))
    pred[nan] = np.nan
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")) * y.shape[0])
    return {"pred": pred[:, None, None, :], "state": {"n_rows": (d["w"] > 0).sum(1)}}


def _countries(payload: dict[str, Any]) -> list[str]:
    return [str(c) for c in np.asarray(payload["countries"])[:, 0]]


def _env_set(name: str) -> set[str]:
    return {c for c in os.environ.get(name, "").split(",") if c}


def _fail(payload: dict[str, Any]) -> dict[str, Any]:
    bad = _env_set("FAKE_FAIL_COUNTRIES") & set(_countries(payload))
    if bad:
        raise ValueError(f"injected failure for {sorted(bad)}")
    return _quantiles(payload)


def _hog(payload: dict[str, Any]) -> dict[str, Any]:
    origin = os.environ.get("FAKE_HOG_ORIGIN")  # month index; unset: every origin
    hog = [
        c in _env_set("FAKE_HOG_COUNTRIES") and (origin is None or int(o) == int(origin))
        for c, o in zip(_countries(payload), payload["origins"], strict=True)
    ]
    if any(hog) and os.environ.get("FAKE_HOG_SIGKILL"):  # die without any memory event
        os.kill(os.getpid(), signal.SIGKILL)
    if any(hog):
        chunks = []
        for _ in range(int(os.environ.get("FAKE_HOG_MB", "2048")) // 64):
            chunks.append(np.ones(64 * 2**20 // 8))  # touched: counts in RSS
            time.sleep(0.02)
    return _quantiles(payload)


def _adapter(name: str, fit: Any) -> Adapter:
    return Adapter(
        name=name,
        version=1,
        pooled=False,
        params=lambda c: {"kind": name},
        features=lambda c: [lag_column("y", 0), lag_column("y", 1)],
        min_rows=lambda c: 4,
        fit_batch=fit,
    )


def _hang(payload: dict[str, Any]) -> dict[str, Any]:
    origin = os.environ.get("FAKE_HANG_ORIGIN")  # month index; unset: every origin
    if any(
        c in _env_set("FAKE_HANG_COUNTRIES") and (origin is None or int(o) == int(origin))
        for c, o in zip(_countries(payload), payload["origins"], strict=True)
    ):
        mark = os.environ.get("FAKE_HANG_MARK")
        if mark:  # tells a test that this process is in its hanging fit now (whole: renamed)
            Path(f"{mark}.part").write_text(str(os.getpid()))
            os.replace(f"{mark}.part", mark)
        if os.environ.get("FAKE_HANG_GIL"):
            sum(range(10**13))  # builtin sum over a range: one C loop, the GIL never released
        time.sleep(float(os.environ.get("FAKE_HANG_S", "3600")))
    return _quantiles(payload)


register(_adapter("fake_quantile", _quantiles))
register(_adapter("fake_hang", _hang))
register(_adapter("fake_fail", _fail))
register(_adapter("fake_hog", _hog))


def _slow_ar_qr(payload: dict[str, Any]) -> dict[str, Any]:
    from pipeline.models.plugins.registry import get_adapter

    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")) * len(payload["origins"]))
    # FAKE_FAIL_ONCE_ORIGIN (month index): batches holding it raise until the fit is alone,
    # which raises once more and leaves FAKE_FAIL_ONCE_MARKER: bisection, then a retry alone
    origin, marker = (
        os.environ.get("FAKE_FAIL_ONCE_ORIGIN"),
        os.environ.get("FAKE_FAIL_ONCE_MARKER"),
    )
    if origin and marker and not os.path.exists(marker) and int(origin) in set(payload["origins"]):
        # alone (slot fillers are copies of the fit; train's payloads carry no keys)
        fits = zip(
            payload["origins"].tolist(), np.asarray(payload["countries"]).tolist(), strict=True
        )
        if len({(o, tuple(c)) for o, c in fits}) == 1:
            open(marker, "w").close()
        raise RuntimeError("injected failure (once)")
    return get_adapter("ar_qr").fit_batch(payload)


def _slow_ar_qr_adapter() -> Adapter:
    from pipeline.models.plugins.registry import get_adapter

    real = get_adapter("ar_qr")
    return Adapter(
        name="slow_ar_qr",
        version=real.version,
        pooled=False,
        params=real.params,
        features=real.features,
        min_rows=real.min_rows,
        fit_batch=_slow_ar_qr,
        slot_period=real.slot_period,
    )


register(_slow_ar_qr_adapter())


def _block(payload: dict[str, Any]) -> dict[str, Any]:
    """A pooled model trained in fixed blocks whose forecasts depend on the batch (as a batched
    network's do): empirical quantiles per (country, horizon) plus 1e-3 x the batch's mean
    target. FAKE_FAIL_ONCE_ORIGIN/_MARKER: the first batch holding that origin raises."""
    origin, marker = (
        os.environ.get("FAKE_FAIL_ONCE_ORIGIN"),
        os.environ.get("FAKE_FAIL_ONCE_MARKER"),
    )
    if origin and marker and not os.path.exists(marker) and int(origin) in set(payload["origins"]):
        open(marker, "w").close()
        raise RuntimeError("injected failure (once)")
    d = payload["data"]
    y = np.where(d["w"][..., None] > 0, d["y"], np.nan)  # (B, C, n, H)
    q = np.asarray(payload["quantiles"])
    pred = np.moveaxis(np.nanquantile(y, q, axis=2), 0, -1)  # (B, C, H, Q)
    pred = pred + 1e-3 * np.nanmean(y)  # coupled to the batch: one key, one block
    pred[~np.asarray(payload["rows"], dtype=bool)] = np.nan
    return {"pred": pred, "state": {"n_rows": (d["w"] > 0).sum(-1)}}


register(
    Adapter(
        name="fake_block",
        version=1,
        pooled=True,
        params=lambda c: {"kind": "fake_block"},
        features=lambda c: [lag_column("y", 0), lag_column("y", 1)],
        min_rows=lambda c: 4,
        fit_batch=_block,
        batch_fits=4,
    )
)
