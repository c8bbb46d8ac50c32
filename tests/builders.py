"""Builders of the objects tests construct, from the validated default config: a new option
with a default (conf/) or a new built-in model needs no edit in the tests that build one
(tests/test_one_source.py).

- `synthetic_settings(**changes)`: `data.synthetic` (a SyntheticConfig) of the default config
  with `changes`, validated as a study's is.
- `keeping(models, *names)`: a study dict's `models` with exactly `names` of the built-in models
  enabled (registry.only_entries), the settings a kept model has there kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conftest import make_config

from pipeline.config import SyntheticConfig
from pipeline.models.plugins import registry


def synthetic_settings(**changes: Any) -> SyntheticConfig:
    """The synthetic panel's settings of the default study, `changes` applied (e.g.
    `n_countries=3, start="2014-01-01"`); an unknown or bad one fails as a study's would."""
    return make_config({"data": {"synthetic": changes}}).data.synthetic


def keeping(models: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """`models` (a study dict's) with built-in models `names` enabled and every other built-in
    one `{"enabled": False}`: a kept model keeps its settings (e.g. `ar_qr: {p: 3}`), a dropped
    one loses them, as replacing its entry did; entries of other models (user, test-only)
    stay as they are."""
    kept = {
        name: {**models.get(name, {}), **entry} if entry["enabled"] else entry
        for name, entry in registry.only_entries(*names).items()
    }
    return {**kept, **{name: e for name, e in models.items() if name not in kept}}
