"""Typed configuration: the one place where a composed (Hydra) config becomes validated objects.

`validate(mapping)` turns the plain dict that Hydra composes (or that `params.yaml` holds) into a
frozen `StudyConfig`, or raises `ConfigError` naming the key, what is allowed and what was given.
Everything below the entry points receives these objects, never raw OmegaConf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from pipeline.config.structured import ConfigError, build

__all__ = ["ConfigError", "StudyConfig", "validate"]

MODEL_NAMES: tuple[str, ...] = ("ar_qr", "lqr", "ensemble_nn")
Auto = Literal["auto"]


@dataclass(frozen=True)
class SyntheticConfig:
    """The seeded synthetic inflation panel (see pipeline.data.synthetic)."""

    n_countries: int = 25
    start: str = "1997-01-01"
    end: str = "2024-12-01"
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "eurostat", "panel"] = "synthetic"
    path: str | None = None  # file for eurostat/panel; relative paths are relative to the project
    dataset: str = "prc_hicp_manr"  # eurostat dataset to download when `path` is not given
    raw_dir: str = "data/raw"  # download cache
    target: str = "prc_hicp_manr_CP00"
    countries: tuple[str, ...] | None = None  # None: every country in the source
    features: tuple[str, ...] = ()  # extra columns lagged like the target
    lags: tuple[int, ...] = (1, 2, 3, 6, 12)
    horizons: tuple[int, ...] = (1, 3, 6, 12)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    missing: Literal["forward_fill_then_mean", "drop"] = "forward_fill_then_mean"
    scale: Literal["per_country", "none"] = "per_country"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class RollingWindowConfig:
    size: int = 60
    step: int = 1
    start_date: str = "2018-01-01"
    end_date: str = "2023-12-01"


@dataclass(frozen=True)
class RuntimeConfig:
    allow_reload: bool = True  # reuse fits already in the model cache
    retrain_if_exists: bool = False  # refit even when a cached fit exists
    max_cores: int | Auto = "auto"
    safety_ram_fraction: float = 0.8
    max_ram_gb: float | Auto = "auto"
    retries: int = 1
    mem_probe_fudge_mb: int = 256
    max_workers: int | None = None  # overrides the probe's worker count
    output_dir: str = "."
    model_cache_dir: str | None = None  # None: {output_dir}/models; share it across sweeps
    scheduler_address: str | None = None  # use an existing Dask cluster instead of a local one
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8787  # a free port is taken when this one is busy
    task_seconds: float = 5.0  # target work per Dask task
    max_in_flight: int | None = None  # tasks submitted at once; None: 4 per worker
    progress_bar: bool = True


@dataclass(frozen=True)
class ArQrConfig:
    enabled: bool = True
    p: int = 12


@dataclass(frozen=True)
class LqrConfig:
    enabled: bool = True
    alphas: tuple[float, ...] = (7.5, 10, 15, 20, 25, 30, 35)
    solver: Literal["huberized", "exact"] = "huberized"
    rff_features: int = 1000
    rff_bandwidth: float | Auto = "auto"  # auto: median heuristic on the training window
    validation_size: int = 12
    penalize_first_lag: bool = True


@dataclass(frozen=True)
class EnsembleNNConfig:
    enabled: bool = True
    units_per_layer: tuple[int, ...] = (32, 32, 32, 32, 32)
    learning_rate: float = 5.0e-5
    epochs: int = 1500
    batch_size: int = 32
    patience: int = 50
    parallel_models: int = 10
    device: str = "auto"


@dataclass(frozen=True)
class ModelsConfig:
    ar_qr: ArQrConfig = field(default_factory=ArQrConfig)
    lqr: LqrConfig = field(default_factory=LqrConfig)
    ensemble_nn: EnsembleNNConfig = field(default_factory=EnsembleNNConfig)

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in MODEL_NAMES if getattr(self, name).enabled)

    def get(self, name: str) -> ArQrConfig | LqrConfig | EnsembleNNConfig:
        if name not in MODEL_NAMES:
            raise ConfigError("models", f"one of {list(MODEL_NAMES)}", name)
        return getattr(self, name)


@dataclass(frozen=True)
class StudyConfig:
    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    rolling_window: RollingWindowConfig = field(default_factory=RollingWindowConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.runtime.output_dir)

    @property
    def model_cache_dir(self) -> Path:
        if self.runtime.model_cache_dir:
            return Path(self.runtime.model_cache_dir)
        return self.output_dir / "models"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def validate(mapping: Mapping[str, Any]) -> StudyConfig:
    """Build a StudyConfig from a composed config mapping; raise ConfigError on the first problem."""
    config = build(StudyConfig, mapping)
    _check_semantics(config)
    return config


# --- semantic validation --------------------------------------------------------------------


def _check_semantics(config: StudyConfig) -> None:
    data, window, runtime, models = (
        config.data,
        config.rolling_window,
        config.runtime,
        config.models,
    )
    _require(len(data.quantiles) > 0, "data.quantiles", "a non-empty list", data.quantiles)
    for i, q in enumerate(data.quantiles):
        _require(0.0 < q < 1.0, f"data.quantiles[{i}]", "a quantile strictly inside (0, 1)", q)
    _require(
        list(data.quantiles) == sorted(set(data.quantiles)),
        "data.quantiles",
        "strictly increasing quantile levels",
        list(data.quantiles),
    )
    _require(len(data.horizons) > 0, "data.horizons", "a non-empty list", data.horizons)
    for i, h in enumerate(data.horizons):
        _require(h >= 1, f"data.horizons[{i}]", "a horizon >= 1 (months ahead)", h)
    _require(
        len(set(data.horizons)) == len(data.horizons),
        "data.horizons",
        "no duplicates",
        data.horizons,
    )
    for i, lag in enumerate(data.lags):
        _require(lag >= 1, f"data.lags[{i}]", "a lag >= 1 (y_t itself is always a feature)", lag)
    _require(len(set(data.lags)) == len(data.lags), "data.lags", "no duplicates", data.lags)
    _require(data.target.strip() != "", "data.target", "a column name", data.target)
    if data.source in ("panel",):
        _require(data.path is not None, "data.path", "a file path for source 'panel'", data.path)
    if data.countries is not None:
        _require(len(data.countries) > 0, "data.countries", "null (all) or a non-empty list", [])
    _require(
        data.synthetic.n_countries >= 1,
        "data.synthetic.n_countries",
        "at least 1",
        data.synthetic.n_countries,
    )

    start = _month(window.start_date, "rolling_window.start_date")
    end = _month(window.end_date, "rolling_window.end_date")
    _require(
        end >= start,
        "rolling_window.end_date",
        f"a date on or after rolling_window.start_date ({window.start_date})",
        window.end_date,
    )
    _require(window.size >= 2, "rolling_window.size", "a window of at least 2 months", window.size)
    _require(window.step >= 1, "rolling_window.step", "a step of at least 1 month", window.step)
    longest = max(data.horizons)
    _require(
        window.size > longest,
        "rolling_window.size",
        f"more months than the longest horizon ({longest}) so that a training pair exists",
        window.size,
    )

    _require(
        0.0 < runtime.safety_ram_fraction <= 1.0,
        "runtime.safety_ram_fraction",
        "a fraction in (0, 1]",
        runtime.safety_ram_fraction,
    )
    if runtime.max_cores != "auto":
        _require(
            runtime.max_cores >= 1,
            "runtime.max_cores",
            "'auto' or an integer >= 1",
            runtime.max_cores,
        )
    if runtime.max_ram_gb != "auto":
        _require(
            runtime.max_ram_gb > 0,
            "runtime.max_ram_gb",
            "'auto' or a positive number",
            runtime.max_ram_gb,
        )
    if runtime.max_workers is not None:
        _require(
            runtime.max_workers >= 1,
            "runtime.max_workers",
            "null or an integer >= 1",
            runtime.max_workers,
        )
    _require(runtime.retries >= 0, "runtime.retries", "an integer >= 0", runtime.retries)
    _require(
        runtime.mem_probe_fudge_mb >= 0,
        "runtime.mem_probe_fudge_mb",
        "an integer >= 0",
        runtime.mem_probe_fudge_mb,
    )
    _require(
        runtime.task_seconds > 0,
        "runtime.task_seconds",
        "a positive number of seconds",
        runtime.task_seconds,
    )
    _require(
        0 <= runtime.dashboard_port <= 65535,
        "runtime.dashboard_port",
        "a TCP port (0 = any free port)",
        runtime.dashboard_port,
    )

    _require(len(models.enabled()) > 0, "models", "at least one enabled model", "all disabled")
    _require(
        models.ar_qr.p >= 1, "models.ar_qr.p", "an autoregressive order p >= 1", models.ar_qr.p
    )
    lqr = models.lqr
    _require(
        len(lqr.alphas) > 0, "models.lqr.alphas", "a non-empty list of penalties", list(lqr.alphas)
    )
    for i, alpha in enumerate(lqr.alphas):
        _require(alpha >= 0, f"models.lqr.alphas[{i}]", "a penalty >= 0", alpha)
    _require(
        lqr.rff_features >= 0,
        "models.lqr.rff_features",
        "an integer >= 0 (0 = linear)",
        lqr.rff_features,
    )
    if lqr.rff_bandwidth != "auto":
        _require(
            lqr.rff_bandwidth > 0,
            "models.lqr.rff_bandwidth",
            "'auto' or a positive number",
            lqr.rff_bandwidth,
        )
    _require(
        lqr.validation_size >= 1,
        "models.lqr.validation_size",
        "at least 1 month",
        lqr.validation_size,
    )
    nn = models.ensemble_nn
    _require(
        len(nn.units_per_layer) > 0,
        "models.ensemble_nn.units_per_layer",
        "a non-empty list of layer widths",
        [],
    )
    for i, units in enumerate(nn.units_per_layer):
        _require(units >= 1, f"models.ensemble_nn.units_per_layer[{i}]", "a width >= 1", units)
    _require(
        nn.learning_rate > 0,
        "models.ensemble_nn.learning_rate",
        "a learning rate > 0",
        nn.learning_rate,
    )
    _require(nn.epochs >= 1, "models.ensemble_nn.epochs", "at least 1 epoch", nn.epochs)
    _require(
        nn.batch_size >= 1, "models.ensemble_nn.batch_size", "a batch size >= 1", nn.batch_size
    )
    _require(nn.patience >= 1, "models.ensemble_nn.patience", "a patience >= 1 epoch", nn.patience)
    _require(
        nn.parallel_models >= 1,
        "models.ensemble_nn.parallel_models",
        "at least 1 member",
        nn.parallel_models,
    )
    _require(
        nn.device in ("auto", "cpu") or nn.device.startswith("cuda"),
        "models.ensemble_nn.device",
        "'auto', 'cpu' or 'cuda[:N]'",
        nn.device,
    )


def _require(ok: bool, key: str, allowed: str, given: Any) -> None:
    if not ok:
        raise ConfigError(key, allowed, given)


def _month(value: str, key: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(key, "a date like '2018-01-01'", value) from None
    if stamp != stamp.to_period("M").to_timestamp():
        raise ConfigError(key, "the first day of a month, like '2018-01-01'", value)
    return stamp


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value
