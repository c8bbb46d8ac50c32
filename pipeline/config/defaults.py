"""The defaults, read from `conf/` (their one source): complete a partial config mapping.

`base_defaults()` is conf/ composed without an experiment preset (config.yaml's defaults
list: data/synthetic, rolling_window, runtime, every built-in model, then config.yaml's own
keys). `with_defaults(partial)` merges a partial mapping over it (mappings merge key by key;
any other value, lists included, replaces), which is what tests and library callers use
instead of dataclass defaults.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any


@cache
def _base(conf_dir: str) -> dict[str, Any]:
    from pipeline.config.compose import compose_dict

    return compose_dict(["~experiment"], Path(conf_dir))


def base_defaults(conf_dir: Path | None = None) -> dict[str, Any]:
    """Every default in conf/ (no experiment preset), as a fresh plain dict."""
    from pipeline.config.compose import find_conf_dir

    return copy.deepcopy(_base(str((conf_dir or find_conf_dir()).resolve())))


def with_defaults(partial: Mapping[str, Any], conf_dir: Path | None = None) -> dict[str, Any]:
    """`partial` merged over conf/'s defaults (`model_names` derived again from `models`)."""
    merged = merge(base_defaults(conf_dir), partial)
    merged["model_names"] = list(merged.get("models") or {})
    return merged


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
