"""Typed configuration: the one place where a composed (Hydra) config becomes validated objects.

`validate(mapping)` turns the plain dict that Hydra composes (or that `params.yaml` holds) into a
frozen `StudyConfig`, or raises `ConfigError` naming the key, what is allowed and what was given.
Everything below the entry points receives these objects, never raw OmegaConf.

This module is the lowest layer that knows the study's shape: it imports no model plugin.
`models.<name>` of a built-in model is checked against the registry's dataclass, which
`validate` (pipeline.config.semantics, above the plugin layer) passes in as a `ModelCatalog`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pipeline.config.structured import ConfigError, build
from pipeline.models.solvers.rules import (
    QUANTILE_LEVEL,
    at_least,
    declared,
    is_integer,
    rule,
)

__all__ = ["ConfigError", "StudyConfig"]

Auto = Literal["auto"]


def _positive(allowed: str) -> dict[str, Any]:
    return rule(lambda v: v > 0, allowed)


# Every default lives in conf/ (one source): these classes declare keys, types and ranges only.


@dataclass(frozen=True)
class SyntheticConfig:
    """The seeded synthetic inflation panel (see pipeline.data.synthetic)."""

    n_countries: int = field(metadata=at_least(1, "at least 1"))
    start: str
    end: str
    seed: int

    def country_names(self) -> list[str]:
        """The synthetic panel's country codes: C01, C02, ... (validation checks names
        against them without generating the panel)."""
        return [f"C{i + 1:02d}" for i in range(self.n_countries)]


@dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "eurostat", "panel"]
    path: str | None  # eurostat/panel file, or (panel) a directory of per-country files;
    # relative paths are relative to the project
    dataset: str  # eurostat dataset to download when `path` is not given
    raw_dir: str  # download cache
    target: str = field(metadata=rule(lambda v: v.strip() != "", "a column name"))
    countries: tuple[str, ...] | None = field(  # None: every country in the source
        metadata=rule(lambda v: len(v) > 0, "null (all) or a non-empty list")
    )
    features: tuple[str, ...]  # extra columns lagged like the target
    lags: tuple[int, ...] = field(
        metadata=at_least(1, "a lag >= 1 (y_t itself is always a feature)", each=True)
    )
    horizons: tuple[int, ...] = field(
        metadata=at_least(1, "a horizon >= 1 (months ahead)", each=True, non_empty=True)
    )
    quantiles: tuple[float, ...] = field(metadata=declared(QUANTILE_LEVEL))
    missing: Literal["forward_fill_then_mean", "drop"]
    scale: Literal["per_country", "none"]
    # a value of data.target/data.features that is not a number (`n/a`, `1,5`, `inf`): `error`
    # stops before any work; `coerce` reads it as missing and warns with counts per country
    non_numeric: Literal["error", "coerce"]
    # plausibility bound on |value| of those columns (a unit or parsing slip such as 1e12);
    # null disables it
    max_abs_value: float | None = field(
        metadata=rule(lambda v: v is None or v > 0, "null (no bound) or a number > 0")
    )
    # the largest data file read (MB, on disk and after decompression): a wrong path (a disk
    # image, a log) fails at once instead of filling memory
    max_file_mb: float = field(metadata=at_least(1, "a size in MB >= 1"))
    synthetic: SyntheticConfig


@dataclass(frozen=True)
class RollingWindowConfig:
    # at most 100 years: a larger window cannot fit any data and its start month is out of
    # the calendar's range
    size: int = field(
        metadata=rule(lambda v: is_integer(v) and 2 <= v <= 1200, "a window of 2 to 1200 months")
    )
    step: int = field(metadata=at_least(1, "a step of at least 1 month"))
    start_date: str
    end_date: str
    # warm-up: origins from here up to start_date are fitted and forecast to feed the
    # calibrators (calibration group) but never scored; None: no warm-up
    calibration_start: str | None


@dataclass(frozen=True)
class CombinationConfig:
    """`evaluation.combo`: the equal-weight quantile average of member models' forecasts."""

    enabled: bool
    members: tuple[str, ...] = field(metadata=rule(lambda v: len(v) > 0, "a non-empty list"))
    method: Literal["mean", "median"]


@dataclass(frozen=True)
class EvaluationConfig:
    benchmark: str  # relative pinball and Diebold-Mariano are against this model
    combo: CombinationConfig
    mcs_size: float = field(metadata=rule(lambda v: 0.0 < v < 1.0, "a level in (0, 1)"))
    mcs_reps: int = field(metadata=at_least(10, "an integer >= 10 bootstrap replications"))
    # countries with fan charts; None: the default choice (pipeline.evaluation.fan_choice)
    fan_countries: tuple[str, ...] | None = field(
        metadata=rule(lambda v: len(v) == len(set(v)) > 0, "null or a list of distinct countries")
    )


@dataclass(frozen=True)
class CalibrationConfig:
    """`calibration`: recalibration of every model's forecasts from its past errors (extra
    rows MODEL = <model>_cal; pipeline.evaluation.calibration)."""

    method: Literal["none", "conformal", "tracker"]
    step: float = field(metadata=_positive("a positive step (tracker)"))
    window: int = field(metadata=at_least(1, "an integer >= 1 realized errors (conformal)"))
    pool: Literal["country", "panel"]
    min_history: int = field(metadata=at_least(0, "an integer >= 0"))


class TimeoutsByModel:
    """`runtime.task_timeout_s_by_model`: {model name: 'auto' or seconds > 0} (a plain dict)."""

    @classmethod
    def from_mapping(cls, mapping: Any, prefix: str) -> dict[str, float | str]:
        if mapping is None:
            return {}
        if not isinstance(mapping, Mapping):
            raise ConfigError(prefix, "a mapping {model: seconds}", mapping)
        out: dict[str, float | str] = {}
        for name, value in mapping.items():
            ok = value == "auto" or (
                isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            )
            if not ok:
                raise ConfigError(
                    f"{prefix}.{name}", "'auto' or a positive number of seconds", value
                )
            out[str(name)] = value if value == "auto" else float(value)
        return out


@dataclass(frozen=True)
class RuntimeConfig:
    allow_reload: bool  # reuse fits already in the model cache
    retrain_if_exists: bool  # refit even when a cached fit exists
    max_cores: int | Auto = field(
        metadata=rule(lambda v: v == "auto" or v >= 1, "'auto' or an integer >= 1")
    )
    safety_ram_fraction: float = field(
        metadata=rule(lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]")
    )
    max_ram_gb: float | Auto = field(
        metadata=rule(lambda v: v == "auto" or v > 0, "'auto' or a positive number")
    )
    retries: int = field(metadata=at_least(0, "an integer >= 0"))
    mem_probe_fudge_mb: int = field(metadata=at_least(0, "an integer >= 0"))
    max_workers: int | None = field(  # the probe's worker count; on a cluster, the least sized for
        metadata=at_least(1, "null or an integer >= 1")
    )
    output_dir: str = field(  # "" would quietly be the current dir
        metadata=rule(lambda v: v.strip() != "", "a directory path ('.' for the current one)")
    )
    model_cache_dir: str | None = field(  # None: {output_dir}/models; share it across sweeps
        metadata=rule(lambda v: v.strip() != "", "null or a directory path")
    )
    scheduler_address: str | None  # use an existing Dask cluster instead of a local one
    dashboard_host: str
    dashboard_port: int = field(  # a free port is taken when this one is busy
        metadata=rule(lambda v: 0 <= v <= 65535, "a TCP port (0 = any free port)")
    )
    task_seconds: float = field(metadata=_positive("a positive number of seconds"))
    max_in_flight: int | None  # tasks submitted at once; None: 4 per worker
    progress_bar: bool
    reprobe: bool  # measure again even when this machine's probe cache has the measurement
    # train runs in the driver, without a cluster, when the probe's estimate of the work
    # (fits x seconds per fit) is below this; 0: always a cluster
    in_process_below_s: float = field(metadata=at_least(0, "a number of seconds >= 0 (0: off)"))
    # seconds a task may run before it is stopped (its worker restarted, or its child process
    # killed) and its fits labelled `timeout`; auto: derived from the probe
    # (pipeline.runtime.sizing.timeouts); the probe and the user-model check use it too
    task_timeout_s: float | Auto = field(
        metadata=rule(lambda v: v == "auto" or v > 0, "'auto' or a positive number of seconds")
    )
    task_timeout_s_by_model: TimeoutsByModel  # {model: seconds or auto}, over task_timeout_s
    # worker restarts one task's fits may cost (its halves and retries included) before the
    # rest of them are labelled memory / worker-lost without another try
    allowed_failures: int = field(metadata=at_least(0, "an integer >= 0"))
    # TLS files for runtime.scheduler_address (a LocalCluster makes its own temporary ones)
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None
    # Dask's statistical profiler on a LocalCluster's workers (the dashboard's Profile page);
    # off: it walks the running task's stack 100 times a second in the worker's event loop
    worker_profiler: bool


# keys of a user model's entry that are not its parameters
USER_MODEL_KEYS = ("_target_", "enabled", "version", "python_path")


@dataclass(frozen=True)
class UserModelConfig:
    """`models.<name>: {_target_: pkg.module.Object, enabled, version, <params>}`."""

    target: str
    enabled: bool
    version: int  # bump when the model's code changes: it enters every fit key
    params: Mapping[str, Any]  # every other key: passed to the model as keyword arguments
    python_path: str | None = None  # a directory put on sys.path (driver and workers)

    @classmethod
    def from_mapping(cls, mapping: Any, prefix: str) -> UserModelConfig:
        if not isinstance(mapping, Mapping):
            raise ConfigError(prefix, "a mapping with _target_ and the model's parameters", mapping)
        target = mapping.get("_target_")
        if not isinstance(target, str) or "." not in target.strip(".") or " " in target:
            raise ConfigError(
                f"{prefix}._target_", "an import path like mypkg.mymodule.MyQuantileModel", target
            )
        enabled, version = mapping.get("enabled", True), mapping.get("version", 1)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{prefix}.enabled", "true or false", enabled)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(
                f"{prefix}.version", "an integer (bump it when the model changes)", version
            )
        python_path = mapping.get("python_path")
        if python_path is not None and not isinstance(python_path, str):
            raise ConfigError(f"{prefix}.python_path", "null or a directory", python_path)
        params = {k: v for k, v in mapping.items() if k not in USER_MODEL_KEYS}
        return cls(target, enabled, version, params, python_path)

    def to_plain(self) -> dict[str, Any]:
        out = {"_target_": self.target, "enabled": self.enabled, "version": self.version}
        if self.python_path is not None:
            out["python_path"] = self.python_path
        return {**out, **_to_plain(dict(self.params))}


class ModelCatalog(Protocol):
    """What building `models` asks of the model registry (pipeline.models.plugins.registry
    is one): declared here so that the config imports no plugin (the plugins read the config)."""

    def builtin_config_types(self) -> dict[str, type]: ...

    def order(self, names: Iterable[str]) -> list[str]: ...


@dataclass(frozen=True)
class ModelsConfig:
    """`models.<name>` for every model: the built-ins (registry) and user models (_target_).

    `config.models.<name>` reads an entry like an attribute.
    """

    entries: Mapping[str, Any]
    table_order: tuple[str, ...]  # the catalog's order of `entries` (built-ins first)

    @classmethod
    def from_mapping(
        cls, mapping: Any, prefix: str, catalog: ModelCatalog | None = None
    ) -> ModelsConfig:
        """`models` checked against `catalog`'s built-in dataclasses. `validate` builds it
        first, with the registry; `build(StudyConfig, ...)` then meets the built instance."""
        if isinstance(mapping, ModelsConfig):
            return mapping
        if catalog is None:
            raise TypeError("models need the model catalog: build the config with validate()")
        types = catalog.builtin_config_types()
        if not isinstance(mapping, Mapping):
            raise ConfigError(prefix, "a mapping of model names to their settings", mapping)
        missing = [name for name in types if name not in mapping]
        if missing:
            raise ConfigError(f"{prefix}.{missing[0]}", "the built-in model's settings", "nothing")
        entries: dict[str, Any] = {}
        for name, value in mapping.items():
            key = f"{prefix}.{name}"
            if name in types:
                entries[name] = build(types[name], value, key)
            elif isinstance(value, Mapping) and "_target_" in value:
                if not str(name).isidentifier():
                    raise ConfigError(key, "a model name made of letters, digits and _", name)
                entries[name] = UserModelConfig.from_mapping(value, key)
            else:
                raise ConfigError(
                    key,
                    f"a built-in model ({list(types)}) or a user model with a _target_",
                    name,
                )
        return cls(entries, tuple(catalog.order(entries)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        entries = self.__dict__.get("entries", {})
        if name in entries:
            return entries[name]
        raise AttributeError(f"no model {name!r} in models")

    def names(self) -> tuple[str, ...]:
        """Every model in the config, in table order (built-ins first)."""
        return self.table_order

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in self.names() if self.entries[name].enabled)

    def user_models(self) -> tuple[str, ...]:
        return tuple(n for n in self.names() if isinstance(self.entries[n], UserModelConfig))

    def get(self, name: str) -> Any:
        if name not in self.entries:
            raise ConfigError("models", f"one of {list(self.names())}", name)
        return self.entries[name]

    def to_plain(self) -> dict[str, Any]:
        return {
            name: entry.to_plain()
            if isinstance(entry, UserModelConfig)
            else _to_plain(dataclasses.asdict(entry))
            for name, entry in ((n, self.entries[n]) for n in self.names())
        }


@dataclass(frozen=True)
class StudyConfig:
    name: str  # a label for the study (presets set it)
    seed: int = field(metadata=at_least(0, "a seed >= 0"))
    model_names: tuple[str, ...]  # derived: the keys of `models`, in order (dvc.yaml reads it)
    data: DataConfig
    rolling_window: RollingWindowConfig
    runtime: RuntimeConfig
    models: ModelsConfig
    evaluation: EvaluationConfig
    calibration: CalibrationConfig

    @property
    def output_dir(self) -> Path:
        return Path(self.runtime.output_dir)

    @property
    def model_cache_dir(self) -> Path:
        if self.runtime.model_cache_dir:
            return Path(self.runtime.model_cache_dir)
        return self.output_dir / "models"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain = {k: _to_plain(dataclasses.asdict(v)) if dataclasses.is_dataclass(v) and k != "models" else v
                 for k, v in out.items()}  # fmt: skip
        plain["models"] = self.models.to_plain()
        return plain


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value
