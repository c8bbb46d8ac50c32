"""One fit plan per run: probe, train, dry-run and assemble share the fit groups and keys.

Inside `one_plan_per_run()` (what `python -m pipeline run` wraps a study in), `fit_groups`
builds a model's groups once and hands the same objects to every later caller with the same
panel and config; outside it (one DVC stage per process) each call builds or loads them. The memo
is keyed by what the groups depend on: the model, the whole study config and the panel's
content, so a caller with another panel or config never gets a stale plan. A per-country
model's fits and keys are also kept on disk under the same names (plan_cache.py), so that one
DVC stage per process builds them once per study, not once per stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline.io import stable_hash
from pipeline.runtime.fits import plan_cache
from pipeline.runtime.fits.fit_groups import (
    FitGroup,
    build_groups,
    group_facts,
    plan_basis,
    plan_parts,
)

if TYPE_CHECKING:  # imported where a panel is hashed: one_plan_per_run (every run) needs none
    import pandas as pd

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


def panel_digest(panel: pd.DataFrame) -> str:
    """sha256 over the panel's column names and values (milliseconds for a large panel)."""
    import pandas as pd

    digest = hashlib.sha256("|".join(map(str, panel.columns)).encode())
    digest.update(pd.util.hash_pandas_object(panel, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def fit_groups(panel: pd.DataFrame, config: Any, adapter: Any) -> list[FitGroup]:
    """`build_groups(panel, config, adapter)`, built once per run inside one_plan_per_run,
    and a per-country model's fits and keys once per machine (runtime/fits/plan_cache.py):
    the stages of `dvc repro`, each its own process, then build the keys once."""
    key = (adapter.name, stable_hash(config.to_dict(), length=64), panel_digest(panel))
    if _memo is not None and key in _memo:
        return _memo[key]
    groups = _built_or_loaded(panel, config, adapter, key)
    if _memo is not None:
        _memo[key] = groups
    return groups


def _built_or_loaded(
    panel: pd.DataFrame, config: Any, adapter: Any, key: tuple[str, str, str]
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
