"""Fit groups and content keys (pure: numpy only; DESIGN.md "Task model").

A *fit* is (model, country, horizon, origin) for every quantile at once; a panel model
(ensemble_nn) has one fit per origin pooling every country and every horizon (one network,
one head), recorded with country "*". This module turns a prepared panel into stacked per-fit
arrays, one `FitGroup` per (model, horizon) (one for a panel model) so that every fit of a group
has the same shape and a task (pipeline.runtime.fits.tasks) can hand a slice of the group to one
batched solver call; `forecast_rows.forecast_chunks` turns the groups' predictions back into
forecast rows.

Content key of a fit = hash of the model name, its code version, its parameters, the
quantiles, the horizon, the origin, the country, the seed and the fingerprint of exactly
the panel values the fit reads (its window's feature rows including lags, its targets and
the forecast-time features). Appending a month of data or adding a country leaves old keys
unchanged; changing one model's parameters changes only that model's keys.
The keys themselves are made in keys.py (per-country fits: country_keys.py, same bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.io import stable_hash
from pipeline.runtime.fits.country_keys import country_fit_keys

# the row helpers live in fit_rows.py (the store reads them without this module);
# origin_labels and sorted_codes stay importable from here, where the tests import them
from pipeline.runtime.fits.fit_rows import expand_rows, sorted_codes
from pipeline.runtime.fits.fit_rows import origin_labels as origin_labels
from pipeline.runtime.fits.fit_windows import (
    CountryWindows,
    country_grid,
    window_arrays,
)
from pipeline.runtime.fits.key_reuse import PlanBasis, previous_fits
from pipeline.runtime.fits.keys import KEY_BYTES, bulk_keys, country_digests, hex_keys, key_prefix
from pipeline.schema import lead_column, month_index

if TYPE_CHECKING:  # the driver builds groups from a panel; a worker's task needs no pandas
    import pandas as pd

    from pipeline.runtime.fits.fit_windows import Panel

PANEL_COUNTRY = "*"  # the country of a panel model's fit (it pools all countries)


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
    # (F,) S32: each fit's content key as its raw 32-byte digest; `keys` gives them as hex
    key_raw: np.ndarray
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
    # (F,) object array of the keys' 64-character hex, made on first need by `keys` (the
    # cache's shards, the progress store and the tasks' payloads take them raw, so a train
    # from an empty cache never makes a str per fit)
    key_hex: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.key_raw.shape[0])

    @property
    def keys(self) -> np.ndarray:
        """(F,) str: the content keys as 64 hex characters (object array, made once)."""
        if self.key_hex is None:
            object.__setattr__(self, "key_hex", hex_keys(self.key_raw.view(np.uint8)))
        return self.key_hex  # type: ignore[return-value]

    def key_bytes(self) -> np.ndarray:
        """(F,) S32: each fit's content key as its raw 32-byte digest.

        An S32 element drops trailing zero bytes when read alone: slice or view the array
        (`raw[i : i + 1]`, `.view(np.uint8)`) rather than index one key."""
        return self.key_raw

    def country_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct forecast-row countries, sorted (object array of str), and each (fit,
        row)'s index in them ((F * C,) int64, row-major): `np.unique(countries.astype(str),
        return_inverse=True)` without sorting F x C strings (0.05-0.08 s per 250k fits)."""
        if isinstance(self.data, CountryWindows):
            # one row a fit: its country is the grid's row `data.country`, and the grid's
            # countries are sorted (country_grid), so the grid rows' order is the names' order
            grid_row = self.data.country
            if not grid_row.size:
                return np.array([], dtype=object), np.zeros(0, dtype=np.int64)
            fit_of_row = np.full(int(grid_row.max()) + 1, -1, dtype=np.int64)
            fit_of_row[grid_row] = np.arange(grid_row.size)  # any fit of each row will do
            present = fit_of_row >= 0
            names = np.asarray(self.countries[fit_of_row[present], 0], dtype=str)
            if np.all(names[:-1] < names[1:]):
                return names.astype(object), (np.cumsum(present) - 1)[grid_row]
        return sorted_codes(self.countries)

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


def build_group(
    panel: Panel,
    *,
    model: str,
    version: int,
    params: Mapping[str, Any],
    quantiles: Sequence[float],
    seed: int,
    features: Sequence[str],
    horizons: Sequence[int],
    origins: Sequence[pd.Timestamp | int],
    size: int,
    pooled: bool,
    min_rows: int,
    batch_fits: int = 1,
    slot_period: int = 1,
    known: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    shared_grid: tuple[list[str], int, np.ndarray, list[str]] | None = None,
    basis: PlanBasis | None = None,
) -> FitGroup:
    """Stack every fit of a model for `horizons` (one horizon per-country; any for pooled).

    A per-country fit exists when its forecast-time features are complete and its window
    holds at least `min_rows` complete rows. A pooled (panel) fit (one per origin, every
    country and every horizon in `horizons`) exists when at least one country qualifies;
    countries that do not are masked out of it (w = 0, no forecast row).
    With `batch_fits` > 1 (pooled only), fits are cut into ceil(n / `batch_fits`) blocks of
    at most `batch_fits` study origins, dealt round-robin by origin index (fit i -> block
    i mod n_blocks); a fit's key includes its block's origins.
    `known` (per-country only): the group's fits and keys as `plan_parts` gave them for the
    same inputs (runtime/fits/plan_cache.py), so that no window is built or hashed here.
    `shared_grid`: country_grid of the panel over a superset of the columns this group reads, and
    those columns' names (build_groups builds it once for every horizon).
    `basis` (per-country only): a previous plan of the same model (plan_cache.py); the keys of
    fits whose hashed values it holds unchanged are taken from it (key_reuse.py), not hashed.
    """
    if not pooled and len(horizons) != 1:
        raise ValueError(f"a per-country group has one horizon; got horizons={list(horizons)}")
    columns = [*features, *(lead_column(h) for h in horizons)]
    picked: tuple[int, ...] | None = None  # the columns of `grid` this group reads, or all
    if shared_grid is None:
        countries, m0, grid = country_grid(panel, columns)
    else:  # the study's one grid: a per-country group keeps it, not a copy of its columns
        countries, m0, grid, names = shared_grid
        picked = tuple(names.index(c) for c in columns)
        if picked == tuple(range(grid.shape[2])):
            picked = None
    org = np.array([_month(o) for o in origins], dtype=np.int64)
    carr = np.array(countries, dtype=object)
    step = int(np.diff(org).min()) if len(org) > 1 else 1
    slot = None
    if not pooled and known is not None:
        c_idx, fit_origin, keys = known
    elif not pooled:
        # per fit: country, origin, slot (when batched by slot) and the values it reads;
        # consecutive origins take consecutive slots (so a task of them needs no filler)
        slots = (org // max(step, 1)) % slot_period if slot_period > 1 else None
        prefix = key_prefix(model, version, params, quantiles, int(horizons[0]), seed)
        c_idx, o_idx, keys = country_fit_keys(
            _picked(grid, picked),
            m0,
            org,
            size,
            int(horizons[0]),
            len(features),
            min_rows,
            prefix,
            country_digests(countries),
            slots,
            previous_fits(basis, prefix, countries, org, size, step, slot_period, len(features)),
        )
        c_idx, fit_origin = c_idx.astype(np.int64), org[o_idx.astype(np.int64)]
    if not pooled:
        hs = tuple(int(h) for h in horizons)
        data: dict[str, np.ndarray] | CountryWindows = CountryWindows(
            grid, m0, size, hs, len(features), c_idx, fit_origin, picked
        )
        fit_country = carr[c_idx]
        row_countries = fit_country[:, None]
        rows = np.ones((len(c_idx), 1), dtype=bool)
        if slot_period > 1:
            slot = (fit_origin // max(step, 1)) % slot_period
    else:
        arr = window_arrays(_picked(grid, picked), m0, org, size, horizons, len(features))
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
        fit_country = np.full(len(o_idx), PANEL_COUNTRY, dtype=object)
        fit_origin = org[o_idx]
        row_countries = np.broadcast_to(carr, (len(o_idx), C)).copy()
        rows = mask
        # country codes enter the key: a pooled model knows which row is whose
        prefix = key_prefix(
            model,
            version,
            params,
            quantiles,
            [int(h) for h in horizons],
            seed,
            extra=stable_hash(countries, length=64),
        )
        ident = [fit_origin]
        if batch_fits > 1:
            ident.append(_block_mates(org, fit_origin, batch_fits))
        keys = bulk_keys(prefix, *ident, data["X"], data["y"], data["X_new"], mask)
    block = None
    if pooled and batch_fits > 1:
        block = _blocks(org, fit_origin, batch_fits)
    return FitGroup(
        model=model,
        horizon=int(horizons[0]) if not pooled else 0,
        horizons=tuple(int(h) for h in horizons),
        key_raw=np.asarray(keys).view(f"S{KEY_BYTES}").ravel(),
        country=np.asarray(fit_country, dtype=object),
        origin=fit_origin,
        countries=np.asarray(row_countries, dtype=object),  # per-country: a view of `country`
        rows=rows,
        data=data,
        block=block,
        slot=slot,
    )


def _picked(grid: np.ndarray, picked: tuple[int, ...] | None) -> np.ndarray:
    """The grid's columns a group reads (what its keys and a pooled model's windows are
    made from): a copy, made only where they are built."""
    return grid if picked is None else grid[..., list(picked)]


def _month(origin: Any) -> int:
    """The month index of an origin given as one (an int) or as a date."""
    return int(origin) if isinstance(origin, int | np.integer) else month_index(origin)


def _blocks(org: np.ndarray, fit_origin: np.ndarray, batch_fits: int) -> np.ndarray:
    """(F,) batch block of each fit: ceil(n / batch_fits) blocks dealt round-robin by origin
    index (not month offset: with step=3 that halved the blocks), so each block spans the whole
    study, blocks cost about the same and the workers finish together (consecutive blocks put
    calm and volatile years apart)."""
    n_blocks = -(-len(org) // batch_fits)
    return np.searchsorted(org, fit_origin) % n_blocks


def _block_mates(org: np.ndarray, fit_origin: np.ndarray, batch_fits: int) -> np.ndarray:
    """(F, 16) uint8: per fit, a digest of its batch block's origins (batch-mates enter the
    key: a batched network's results depend on them)."""
    block = _blocks(org, fit_origin, batch_fits)
    digests = {
        int(b): hashlib.sha256(fit_origin[block == b].astype("<i8").tobytes()).digest()[:16]
        for b in np.unique(block)
    }
    blob = b"".join(digests[int(b)] for b in block)
    return np.frombuffer(blob, dtype=np.uint8).reshape(len(block), 16)


def group_facts(config: Any, adapter: Any) -> dict[str, Any]:
    """What build_groups reads of the adapter, as plain data (the plan cache's name holds it:
    a user model whose features or minimum rows change gets a new plan)."""
    return {
        "name": adapter.name,
        "version": int(adapter.version),
        "params": adapter.params(config),
        "features": list(adapter.features(config)),
        "pooled": bool(adapter.pooled),
        "min_rows": int(adapter.min_rows(config)),
        "batch_fits": int(adapter.batch_fits),
        "slot_period": int(getattr(adapter, "slot_period", 1)),
    }


def plan_parts(groups: Sequence[FitGroup]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per per-country group: (country index, origin month, keys) of its fits, what
    build_group's `known` takes back (empty for pooled groups: they are not kept)."""
    return [
        (g.data.country, g.data.origin, g.key_raw)
        for g in groups
        if isinstance(g.data, CountryWindows)
    ]


def plan_columns(config: Any, adapter: Any) -> list[str]:
    """The panel's columns a model's groups read besides COUNTRY and TIME: its features, then
    the target of each horizon (what the plan's digest covers and train reads of the panel)."""
    return [*adapter.features(config), *(lead_column(h) for h in config.data.horizons)]


def build_groups(
    panel: Panel,
    config: Any,
    adapter: Any,
    known: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    basis: PlanBasis | None = None,
) -> list[FitGroup]:
    """Every fit of one model for this study: one FitGroup per horizon (one in all for a
    pooled model, whose fits forecast every horizon at once).

    `config` is a StudyConfig and `adapter` a pipeline.models.plugins.spec.Adapter (duck-typed here so
    this module stays free of model imports). `known`: plan_parts of the same model, panel
    and config (per-country models only), reused instead of building the windows and keys.
    `basis`: shared_plan.plan_basis of an earlier plan of the model (another panel or end
    date): the keys of fits whose hashed bytes it holds unchanged are reused (per-country
    models only).
    """
    from pipeline.data.windows import origin_months

    horizon_sets = (
        [tuple(config.data.horizons)] if adapter.pooled else [(h,) for h in config.data.horizons]
    )
    # one month grid of every column any group reads (a grid per group rebuilt the panel's
    # country and month index each time)
    columns = plan_columns(config, adapter)
    countries, m0, every = country_grid(panel, columns)
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
            origins=origin_months(config.rolling_window),
            size=config.rolling_window.size,
            pooled=adapter.pooled,
            min_rows=adapter.min_rows(config),
            batch_fits=adapter.batch_fits,
            slot_period=getattr(adapter, "slot_period", 1),
            known=None if known is None or adapter.pooled else known[i],
            shared_grid=(countries, m0, every, columns),
            basis=None if adapter.pooled else basis,
        )
        for i, hs in enumerate(horizon_sets)
    ]


def expand(group: FitGroup, fits: np.ndarray, n_quantiles: int) -> tuple[np.ndarray, ...]:
    """Index arrays (fit, row, horizon index, quantile index), one entry per forecast of the
    fits `fits` (positions in the group), fit-major, then row, horizon, quantile."""
    return expand_rows(group.rows, fits, len(group.horizons), n_quantiles)
