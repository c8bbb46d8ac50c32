"""The model registry: the one source of model names and of how each model is driven.

- Built-in models: every module of `pipeline.models.plugins.builtin` that defines `ADAPTER` (and its
  `conf/models/<name>/default.yaml`); found by walking the package, so adding one touches
  that module and its YAML file.
- User models: `models.<name>: {_target_: pkg.module.Object, ...}` in the config
  (pipeline.models.plugins.user builds their adapters).
- Test-only adapters: `register(adapter)`, or modules named in PIPELINE_EXTRA_ADAPTERS
  (comma-separated module names or .py paths) that call `register` on import, so worker
  processes (which inherit the environment) see them too.

`only(*names)` / `only_entries(*names)`: a study of some built-in models, as overrides or as
its `models` mapping (tests and benchmarks).

Config validation, the CLI, the DVC stage list (params.yaml `models`), the probe, train, the
results page and sweep summaries all ask this module.

Imports: plugins/ (spec, builtin/, user) and pipeline.errors; pipeline.config.study for types
only (never the pipeline.config package, whose validate imports this module).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.models.plugins.spec import Adapter

if TYPE_CHECKING:
    from pipeline.config.study import StudyConfig

EXTRA_ADAPTERS_ENV = "PIPELINE_EXTRA_ADAPTERS"
_EXTRA: dict[str, Adapter] = {}
_LOADED_EXTRA: set[str] = set()


@cache
def _builtins() -> dict[str, Adapter]:
    import pipeline.models.plugins.builtin as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        adapter = getattr(module, "ADAPTER", None)
        if isinstance(adapter, Adapter):
            if adapter.name != info.name:
                raise RuntimeError(f"{module.__name__}: ADAPTER.name must be {info.name!r}")
            found.append(adapter)
    return {a.name: a for a in sorted(found, key=lambda a: (a.rank, a.name))}


def builtin_names() -> tuple[str, ...]:
    """The built-in models, in table order."""
    return tuple(_builtins())


def builtin(name: str) -> Adapter:
    """The adapter of built-in model `name` (KeyError for any other name)."""
    return _builtins()[name]


def builtin_config_types() -> dict[str, type]:
    """`models.<name>` dataclass of each built-in model."""
    return {n: a.config_type for n, a in _builtins().items() if a.config_type is not None}


def order(names: Any) -> list[str]:
    """`names` in table order: built-ins first (registry order), then the rest sorted."""
    rank = {n: i for i, n in enumerate(builtin_names())}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def only_entries(*names: str) -> dict[str, dict[str, bool]]:
    """`{m: {"enabled": m in names}}` for every built-in model `m`: a config's `models` that
    enables exactly `names` among them. A study of some models (tests, benchmarks) says which
    it keeps, not which it drops, so a new built-in model, enabled by default, does not join
    it unseen."""
    unknown = [n for n in names if n not in _builtins()]
    if unknown:
        raise ConfigError("model", f"built-in models among {list(builtin_names())}", unknown)
    return {n: {"enabled": n in names} for n in builtin_names()}


def only(*names: str) -> list[str]:
    """`only_entries(*names)` as Hydra overrides, `models.<m>.enabled=true|false`."""
    return [
        f"models.{n}.enabled={str(e['enabled']).lower()}" for n, e in only_entries(*names).items()
    ]


def register(adapter: Adapter) -> None:
    """Add (or replace) a test-only adapter by name."""
    _EXTRA[adapter.name] = adapter


def extra_names() -> tuple[str, ...]:
    """The test-only adapters registered so far (PIPELINE_EXTRA_ADAPTERS loaded first)."""
    _load_extra()
    return tuple(_EXTRA)


def adapter_for(config: StudyConfig | None, name: str) -> Adapter:
    """The adapter of model `name`: a built-in, a user model of `config`, or a test-only one."""
    if name in _builtins():
        adapter = _builtins()[name]
        if adapter.block_fits is not None and config is not None:
            return replace(adapter, batch_fits=adapter.block_fits(config))
        return adapter
    if config is not None:
        entry = config.models.entries.get(name)
        if entry is not None and getattr(entry, "target", None):
            from pipeline.models.plugins.user import user_adapter

            return user_adapter(name, entry)
    _load_extra()
    if name in _EXTRA:
        return _EXTRA[name]
    known = [*builtin_names(), *(config.models.names() if config is not None else ())]
    raise ConfigError("model", f"one of {order(known)}", name)


def task_adapter(payload: dict[str, Any]) -> Adapter:
    """The adapter a worker runs for `payload` (user models travel as their target)."""
    if payload.get("user_model"):
        from pipeline.models.plugins.user import adapter_from_payload

        return adapter_from_payload(payload)
    return adapter_for(None, payload["model"])


def get_adapter(name: str) -> Adapter:
    """A built-in or test-only adapter by name (no config: no user models)."""
    return adapter_for(None, name)


def _load_extra() -> None:
    for spec in filter(
        None, (s.strip() for s in os.environ.get(EXTRA_ADAPTERS_ENV, "").split(","))
    ):
        if spec in _LOADED_EXTRA:
            continue
        _LOADED_EXTRA.add(spec)
        if spec.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(spec).stem, spec)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
