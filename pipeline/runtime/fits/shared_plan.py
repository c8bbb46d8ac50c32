"""One fit plan per run: probe, train, dry-run and assemble share the fit groups and keys.

Inside `one_plan_per_run()` (what `python -m pipeline run` wraps a study in), `fit_groups`
builds a model's groups once and hands the same objects to every later caller with the same
panel and config; outside it (one DVC stage per process) it builds them as before. The memo
is keyed by what the groups depend on: the model, the whole study config and the panel's
content, so a caller with another panel or config never gets a stale plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from pipeline.io import stable_hash
from pipeline.runtime.fits.fit_groups import FitGroup, build_groups

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
    digest = hashlib.sha256("|".join(map(str, panel.columns)).encode())
    digest.update(pd.util.hash_pandas_object(panel, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def fit_groups(panel: pd.DataFrame, config: Any, adapter: Any) -> list[FitGroup]:
    """`build_groups(panel, config, adapter)`, built once per run inside one_plan_per_run."""
    if _memo is None:
        return build_groups(panel, config, adapter)
    key = (adapter.name, stable_hash(config.to_dict(), length=64), panel_digest(panel))
    if key not in _memo:
        _memo[key] = build_groups(panel, config, adapter)
    return _memo[key]
