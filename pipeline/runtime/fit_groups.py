"""Fit groups and content keys (pure: numpy and pandas only; DESIGN.md "Task model").

A *fit* is (model, country, horizon, origin) for every quantile at once; a panel model
(ensemble_nn) has one fit per origin pooling every country and every horizon (one network,
one head), recorded with country "*". This module turns a prepared panel into stacked per-fit
arrays, one `FitGroup` per (model, horizon) (one for a panel model) so that every fit of a group
has the same shape and a task (pipeline.runtime.tasks) can hand a slice of the group to one
batched solver call; `forecast_table` turns the groups' predictions back into forecast rows.

Content key of a fit = hash of the model name, its code version, its parameters, the
quantiles, the horizon, the origin, the country, the seed and the fingerprint of exactly
the panel values the fit reads (its window's feature rows including lags, its targets and
the forecast-time features). Appending a month of data or adding a country leaves old keys
unchanged; changing one model's parameters changes only that model's keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.windows import month_index, month_start
from pipeline.io import stable_hash
from pipeline.runtime.fit_windows import CountryWindows, country_grid, window_arrays
from pipeline.schema import COUNTRY, TIME

PANEL_COUNTRY = "*"  # the country of a panel model's fit (it pools all countries)
COUNTRY_CHUNK = 8  # countries whose windows are built at once when grouping per-country fits


@dataclass(frozen=True)
class FitGroup:
    """All fits of one model and horizon, stacked along the first axis (F fits).

    `data` holds the solver inputs, e.g. X (F, n, p), y (F, n), w (F, n), X_new (F, C, p);
    `countries` (C,) are the forecast rows of each fit (one for per-country models) and
    `rows` (F, C) marks which of them a fit forecasts.
    """

    model: str
    horizon: int  # the group's horizon; 0 when every fit forecasts all `horizons` at once
    horizons: tuple[int, ...]  # horizons each fit forecasts (pred is (F, C, H, Q))
    keys: np.ndarray  # (F,) str
    country: np.ndarray  # (F,) str, PANEL_COUNTRY for panel fits
    origin: np.ndarray  # (F,) int month index
    countries: np.ndarray  # (F, C) str: forecast-row countries of each fit
    rows: np.ndarray  # (F, C) bool: forecast row exists
    # the fits' arrays: stacked (panel fits) or built per task from the country grid
    data: dict[str, np.ndarray] | CountryWindows = field(repr=False)
    # (F,) batch block of each fit, or None. Fits of one block always train in one batched
    # call: float32 results of a batched network depend (at rounding level, and then through
    # early stopping) on its batch-mates, so batch-mates are fixed by the study, not by what
    # is left to do or by the worker count, and they enter the fit's key.
    block: np.ndarray | None = field(default=None, repr=False)
    # (F,) batch slot of each fit (adapter.slot_period > 1), or None: part of the fit's key
    slot: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of the fits `index` (X, y, w, X_new), contiguous."""
        if isinstance(self.data, CountryWindows):
            return self.data.take(np.asarray(index))
        return {k: np.ascontiguousarray(v[index]) for k, v in self.data.items()}

    def fit_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-fit shape and dtype of each array of `take`."""
        if isinstance(self.data, CountryWindows):
            return self.data.fit_shapes()
        return {k: (tuple(v.shape[1:]), v.dtype.str) for k, v in self.data.items()}


def fingerprints(*arrays: np.ndarray) -> np.ndarray:
    """sha256 per leading index over the given arrays' values (NaN canonicalised)."""
    n = arrays[0].shape[0]
    blobs = [np.ascontiguousarray(np.where(np.isnan(a), np.nan, a)).reshape(n, -1) for a in arrays]
    out = np.empty(n, dtype=object)
    for i in range(n):
        digest = hashlib.sha256()
        for blob in blobs:
            digest.update(blob[i].tobytes())
        out[i] = digest.hexdigest()
    return out


def fit_key(
    model: str,
    version: int,
    params: Mapping[str, Any],
    quantiles: Sequence[float],
    horizon: int | Sequence[int],
    origin: int,
    country: str,
    data_fingerprint: str,
    seed: int,
) -> str:
    """The content key of one fit (64 hex characters)."""
    payload = {
        "model": model,
        "version": int(version),
        "params": dict(params),
        "quantiles": [float(q) for q in quantiles],
        "horizon": int(horizon) if np.isscalar(horizon) else [int(h) for h in horizon],
        "origin": month_start(int(origin)).strftime("%Y-%m"),
        "country": country,
        "data": data_fingerprint,
        "seed": int(seed),
    }
    return stable_hash(payload, length=64)


def build_group(
    panel: pd.DataFrame,
    *,
    model: str,
    version: int,
    params: Mapping[str, Any],
    quantiles: Sequence[float],
    seed: int,
    features: Sequence[str],
    horizons: Sequence[int],
    origins: Sequence[pd.Timestamp],
    size: int,
    pooled: bool,
    min_rows: int,
    batch_fits: int = 1,
    slot_period: int = 1,
) -> FitGroup:
    """Stack every fit of a model for `horizons` (one horizon per-country; any for pooled).

    A per-country fit exists when its forecast-time features are complete and its window
    holds at least `min_rows` complete rows. A pooled (panel) fit (one per origin, every
    country and every horizon in `horizons`) exists when at least one country qualifies;
    countries that do not are masked out of it (w = 0, no forecast row).
    With `batch_fits` > 1 (pooled only), fits are cut into ceil(n / `batch_fits`) blocks of
    at most `batch_fits` study origins, dealt round-robin by origin index (fit i -> block
    i mod n_blocks); a fit's key includes its block's origins.
    """
    from pipeline.schema import lead_column

    if not pooled and len(horizons) != 1:
        raise ValueError(f"a per-country group has one horizon; got horizons={list(horizons)}")
    countries, m0, grid = country_grid(panel, [*features, *(lead_column(h) for h in horizons)])
    org = np.array([month_index(o) for o in origins], dtype=np.int64)
    carr = np.array(countries, dtype=object)
    if not pooled:
        # a few countries at a time: the driver never holds every fit's window at once
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for c0 in range(0, len(countries), COUNTRY_CHUNK):
            arr = window_arrays(
                grid[c0 : c0 + COUNTRY_CHUNK], m0, org, size, horizons, len(features)
            )
            ok = np.isfinite(arr["X_new"]).all(-1) & (arr["w"].sum(-1) >= min_rows)  # (c, O)
            ci, oi = np.nonzero(ok)
            X, y, x_new = arr["X"][ci, oi], arr["y"][ci, oi][..., 0], arr["X_new"][ci, oi]
            parts.append((ci + c0, oi, fingerprints(X, y, x_new[:, None, :])))
        c_idx, o_idx, fp = (np.concatenate([p[i] for p in parts]) for i in range(3))
        c_idx, o_idx = c_idx.astype(np.int64), o_idx.astype(np.int64)
        fp = fp.astype(object)
        data: dict[str, np.ndarray] | CountryWindows = CountryWindows(
            grid, m0, size, tuple(int(h) for h in horizons), len(features), c_idx, org[o_idx]
        )
        fit_country = carr[c_idx]
        fit_origin = org[o_idx]
        row_countries = fit_country[:, None]
        rows = np.ones((len(c_idx), 1), dtype=bool)
        key_horizon: int | list[int] = int(horizons[0])
    else:
        arr = window_arrays(grid, m0, org, size, horizons, len(features))
        ok = np.isfinite(arr["X_new"]).all(-1) & (arr["w"].sum(-1) >= min_rows)  # (C, O)
        C = ok.shape[0]
        o_idx = np.nonzero(ok.any(0))[0]
        mask = ok[:, o_idx].T  # (F, C)
        data = {k: np.swapaxes(v[:, o_idx], 0, 1) for k, v in arr.items()}  # (F, C, ...)
        data["w"] = data["w"] * mask[..., None]
        live = data["w"] > 0
        data["X"] = np.where(live[..., None], data["X"], np.nan)
        data["y"] = np.where(live[..., None], data["y"], np.nan)
        data["X_new"] = np.where(mask[..., None], data["X_new"], np.nan)
        fp = fingerprints(data["X"], data["y"], data["X_new"], mask)
        # country codes enter the fingerprint: a pooled model knows which row is whose
        code_fp = stable_hash(countries, length=64)
        fp = np.array([f + code_fp for f in fp], dtype=object)
        fit_country = np.full(len(o_idx), PANEL_COUNTRY, dtype=object)
        fit_origin = org[o_idx]
        row_countries = np.broadcast_to(carr, (len(o_idx), C)).copy()
        rows = mask
        key_horizon = [int(h) for h in horizons]
    block = None
    if pooled and batch_fits > 1:
        # by origin index (not month offset: with step=3 that halved the blocks), dealt out
        # round-robin: each block spans the whole study, so blocks cost about the same and
        # the workers finish together (consecutive blocks put calm and volatile years apart)
        n_blocks = -(-len(org) // batch_fits)
        block = np.searchsorted(org, fit_origin) % n_blocks
        mates = {
            b: [month_start(int(o)).strftime("%Y-%m") for o in fit_origin[block == b]]
            for b in set(block.tolist())
        }
        fp = np.array(
            [f + stable_hash(mates[int(b)], length=16) for f, b in zip(fp, block, strict=True)],
            dtype=object,
        )
    slot = None
    if not pooled and slot_period > 1:
        # consecutive origins take consecutive slots (so a task of them needs no filler);
        # the slot enters the key: one key, one result
        step = int(np.diff(org).min()) if len(org) > 1 else 1
        slot = (fit_origin // max(step, 1)) % slot_period
        fp = np.array([f"{f}|slot{int(s)}" for f, s in zip(fp, slot, strict=True)], dtype=object)
    keys = np.array(
        [
            fit_key(model, version, params, quantiles, key_horizon, o, c, f, seed)
            for o, c, f in zip(fit_origin, fit_country, fp, strict=True)
        ],
        dtype=object,
    )
    return FitGroup(
        model=model,
        horizon=int(horizons[0]) if not pooled else 0,
        horizons=tuple(int(h) for h in horizons),
        keys=keys,
        country=np.asarray(fit_country, dtype=object),
        origin=fit_origin,
        countries=row_countries.astype(object),
        rows=rows,
        data=data,
        block=block,
        slot=slot,
    )


def build_groups(panel: pd.DataFrame, config: Any, adapter: Any) -> list[FitGroup]:
    """Every fit of one model for this study: one FitGroup per horizon (one in all for a
    pooled model, whose fits forecast every horizon at once).

    `config` is a StudyConfig and `adapter` a pipeline.models.spec.Adapter (duck-typed here so
    this module stays free of model imports).
    """
    from pipeline.data.windows import origins as window_origins

    horizon_sets = (
        [tuple(config.data.horizons)] if adapter.pooled else [(h,) for h in config.data.horizons]
    )
    return [
        build_group(
            panel,
            model=adapter.name,
            version=adapter.version,
            params=adapter.params(config),
            quantiles=config.data.quantiles,
            seed=config.seed,
            features=adapter.features(config),
            horizons=hs,
            origins=window_origins(config.rolling_window),
            size=config.rolling_window.size,
            pooled=adapter.pooled,
            min_rows=adapter.min_rows(config),
            batch_fits=adapter.batch_fits,
            slot_period=getattr(adapter, "slot_period", 1),
        )
        for hs in horizon_sets
    ]


def forecast_table(
    groups: Sequence[FitGroup],
    where: Mapping[str, tuple[int, int]],
    preds: Mapping[str, tuple[np.ndarray, np.ndarray]],
    config: Any,
    model: str,
    panel: pd.DataFrame,
) -> pd.DataFrame:
    """Forecast table (pipeline.schema) of the fits in `preds`: key -> (pred (C, H, Q), alpha (Q,)).

    `where` maps a key to (group, position); ACTUAL is y_raw at (COUNTRY, TIME) from `panel`.
    """
    from pipeline.schema import Y_RAW, conform_forecasts

    qs = np.asarray(config.data.quantiles, dtype=np.float64)
    Q = len(qs)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("COUNTRY", "HORIZON", "ORIGIN", "QUANTILE", "FORECAST", "ALPHA")
    }
    for key, (pred, alpha) in preds.items():
        gi, i = where[key]
        g = groups[gi]
        live = np.nonzero(g.rows[i])[0]
        H = len(g.horizons)
        n = live.size * H * Q
        parts["COUNTRY"].append(np.repeat(g.countries[i][live].astype(str), H * Q))
        parts["HORIZON"].append(
            np.tile(np.repeat(np.asarray(g.horizons, dtype=np.int64), Q), live.size)
        )
        parts["ORIGIN"].append(np.full(n, int(g.origin[i]), dtype=np.int64))
        parts["QUANTILE"].append(np.tile(qs, live.size * H))
        parts["FORECAST"].append(np.asarray(pred, dtype=np.float64)[live].reshape(-1))
        parts["ALPHA"].append(np.tile(np.asarray(alpha, dtype=np.float64), live.size * H))
    cols = {k: (np.concatenate(v) if v else np.array([])) for k, v in parts.items()}
    origin = cols.pop("ORIGIN").astype(np.int64)
    frame = pd.DataFrame(cols)
    frame["WINDOW_END"] = _months(origin)
    frame["WINDOW_START"] = _months(origin - config.rolling_window.size + 1)
    frame["TIME"] = _months(origin + frame["HORIZON"].to_numpy(dtype=np.int64))
    frame["TARGET"] = config.data.target
    frame["MODEL"] = model
    actual = panel.set_index([COUNTRY, TIME])[Y_RAW]
    idx = pd.MultiIndex.from_arrays([frame["COUNTRY"].astype(str), frame["TIME"]])
    frame["ACTUAL"] = (
        actual.reindex(idx).to_numpy() if len(frame) else np.array([], dtype=np.float64)
    )
    return conform_forecasts(frame)


def _months(index: np.ndarray) -> pd.DatetimeIndex:
    index = np.asarray(index, dtype=np.int64)
    if not index.size:
        return pd.DatetimeIndex([], dtype="datetime64[ns]")
    return pd.DatetimeIndex(
        pd.to_datetime({"year": index // 12, "month": index % 12 + 1, "day": 1})
    )
