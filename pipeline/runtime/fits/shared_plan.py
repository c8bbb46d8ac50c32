"""One fit plan per run: probe, train, dry-run and assemble share the fit groups and keys.

Inside `one_plan_per_run()` (what `python -m pipeline run` wraps a study in), `fit_groups`
builds a model's groups once and hands the same objects to every later caller with the same
panel and config; outside it (one DVC stage per process) each call builds or loads them. The memo
is keyed by what the groups depend on: the model, the whole study config and the content of
the panel's columns they read, so a caller with another panel or config never gets a stale plan. A per-country
model's fits and keys are also kept on disk under the same names (plan_cache.py), so that one
DVC stage per process builds them once per study, not once per stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.prepared import PanelColumns
from pipeline.io import stable_hash
from pipeline.runtime.fits import plan_cache
from pipeline.runtime.fits.fit_groups import (
    FitGroup,
    build_groups,
    group_facts,
    plan_columns,
    plan_parts,
)
from pipeline.runtime.fits.fit_windows import CountryWindows, grid_countries
from pipeline.runtime.fits.key_reuse import PlanBasis, canonical
from pipeline.runtime.fits.keys import key_prefix
from pipeline.schema import COUNTRY, TIME

if TYPE_CHECKING:
    from pipeline.runtime.fits.fit_windows import Panel

_memo: dict[tuple[str, str, str], list[FitGroup]] | None = None


@contextmanager
def one_plan_per_run() -> Iterator[None]:
    """Share fit groups between the stages of one in-process run (dropped on exit)."""
    global _memo
    saved, _memo = _memo, {}
    try:
        yield
    finally:
        _memo = saved


def release_plans() -> None:
    """Forget the plans built so far (their memory goes back) and keep sharing later ones; for
    the run's last user of the plans (assemble, once its expected fits are built)."""
    if _memo is not None:
        _memo.clear()


def panel_digest(panel: Panel, columns: Sequence[str] | None = None) -> str:
    """sha256 over the panel's column names, kinds and values, the same for its DataFrame and
    its Arrow columns (pipeline.data.prepared.PanelColumns: probe and train read no pandas):
    a string column as its sorted distinct values and each row's code, times as int64
    nanoseconds, numbers as their bytes (about 30 ms for a 40 MB panel).

    `columns`: only these, in this order (those the panel has: a missing one is the grid's
    error to report); fit_groups digests what the groups read, not the whole panel."""
    digest = hashlib.sha256(b"panel columns 1")
    names = panel.columns if columns is None else [c for c in columns if c in panel.columns]
    for name in names:
        values, distinct = _canonical(panel, name)
        values = np.ascontiguousarray(values)
        head = json.dumps([str(name), values.dtype.str, int(values.size), distinct]).encode()
        digest.update(len(head).to_bytes(8, "little") + head)
        digest.update(memoryview(values).cast("B"))
    return digest.hexdigest()


def _canonical(panel: Panel, name: str) -> tuple[np.ndarray, list[str] | None]:
    """Column `name` as (values, distinct strings or None) for panel_digest."""
    if isinstance(panel, PanelColumns):
        import pyarrow as pa

        kind = panel.table.schema.field(name).type
        if pa.types.is_dictionary(kind):  # COUNTRY as read (its values are strings)
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            distinct, codes = panel.codes(name)
            return codes, distinct
        values = panel.values(name)
    else:
        column = panel[name]
        if column.dtype.kind in "OSU" or str(column.dtype) in ("string", "category"):
            import pandas as pd

            distinct = sorted(column.astype(str).unique())
            codes = pd.Categorical(column.astype(str), categories=distinct).codes
            return codes.astype(np.int64), distinct
        values = column.to_numpy()
    if values.dtype.kind == "M":
        return values.astype("datetime64[ns]").view(np.int64), None
    return values, None


def fit_groups(panel: Panel, config: Any, adapter: Any) -> list[FitGroup]:
    """`build_groups(panel, config, adapter)`, built once per run inside one_plan_per_run,
    and a per-country model's fits and keys once per machine (runtime/fits/plan_cache.py):
    the stages of `dvc repro`, each its own process, then build the keys once."""
    # the digest of what the groups read of the panel: a column they do not read (the
    # actuals, other models' features) cannot change them
    read = [COUNTRY, TIME, *plan_columns(config, adapter)]
    key = (adapter.name, stable_hash(config.to_dict(), length=64), panel_digest(panel, read))
    if _memo is not None and key in _memo:
        return _memo[key]
    groups = _built_or_loaded(panel, config, adapter, key)
    if _memo is not None:
        _memo[key] = groups
    return groups


def _built_or_loaded(
    panel: Panel, config: Any, adapter: Any, key: tuple[str, str, str]
) -> list[FitGroup]:
    if adapter.pooled:  # its windows are the plan: nothing smaller to keep
        return build_groups(panel, config, adapter)
    name = plan_cache.plan_name(key[0], group_facts(config, adapter), key[1], key[2])
    parts = plan_cache.load(name)
    if parts is not None and len(parts) == len(config.data.horizons):  # one group a horizon
        return build_groups(panel, config, adapter, known=parts)
    # a new plan (a later end date, new or revised data): the previous one's unchanged keys
    groups = build_groups(panel, config, adapter, basis=plan_cache.previous(name))
    plan_cache.save(name, plan_parts(groups), plan_basis(panel, groups, config, adapter))
    return groups


def plan_basis(panel: Panel, groups: Sequence[FitGroup], config: Any, adapter: Any) -> PlanBasis:
    """What a per-country model's keys were made from (kept with them by plan_cache.py, so
    that the next plan of the model, e.g. the monthly update's, reuses its unchanged keys)."""
    from pipeline.data.windows import origin_months

    windows = [g.data for g in groups if isinstance(g.data, CountryWindows)]
    p = len(adapter.features(config))
    org = np.array(origin_months(config.rolling_window))
    step = int(np.diff(org).min()) if len(org) > 1 else 1
    every = (  # the features once, then each group's target
        (v[..., :p], v[..., p]) for v in (w.values() for w in windows)
    )
    features, leads = zip(*every, strict=True) if windows else ((), ())
    return PlanBasis(
        countries=np.asarray(grid_countries(panel), dtype=str),
        m0=windows[0].m0 if windows else 0,
        features=canonical(features[0]) if windows else np.zeros((0, 0, p)),
        size=int(config.rolling_window.size),
        step=step,
        prefixes=tuple(
            key_prefix(
                adapter.name,
                adapter.version,
                adapter.params(config),
                config.data.quantiles,
                g.horizon,
                config.seed,
            )
            for g in groups
            if isinstance(g.data, CountryWindows)
        ),
        leads=tuple(canonical(lead) for lead in leads),
        parts=tuple(plan_parts(groups)),
    )
