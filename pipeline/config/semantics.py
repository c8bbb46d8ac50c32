"""`validate`: a StudyConfig built from a composed mapping, then the checks across its fields
(after `build` has checked each field's own type and range, declared on the field): dates in
order, names that must exist, no duplicates.

Validation is where the model registry is discovered: this module sits above the plugin layer
and hands the registry to `ModelsConfig` (pipeline.config.study, below the plugins, declares
only the `ModelCatalog` it needs), so the layers run one way: config.study <- plugins <-
config.semantics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.config.scheduler import parse_address
from pipeline.config.structured import ConfigError, build
from pipeline.config.study import ModelCatalog, ModelsConfig, StudyConfig
from pipeline.models.plugins import registry
from pipeline.models.solvers.rules import check_quantiles
from pipeline.schema import iso_day


def validate(mapping: Mapping[str, Any], catalog: ModelCatalog = registry) -> StudyConfig:
    """Build a StudyConfig from a composed config mapping; raise ConfigError on the first problem.

    `catalog` (the model registry) checks `models.<name>` of the built-in models."""
    if "model_names" not in mapping and isinstance(mapping.get("models"), Mapping):
        # derived: a config file (`write-config`) leaves it out
        mapping = {**mapping, "model_names": list(mapping["models"])}
    if "models" in mapping:  # built here, with the catalog; `build` takes the instance as is
        mapping = {
            **mapping,
            "models": ModelsConfig.from_mapping(mapping["models"], "models", catalog),
        }
    config = build(StudyConfig, mapping)
    check_semantics(config)
    return config


def check_semantics(config: StudyConfig) -> None:
    """Checks across fields (each field's own range is declared on it and checked by `build`)."""
    data, window = config.data, config.rolling_window
    check_quantiles(data.quantiles, "data.quantiles")  # the kernels' own check: increasing
    _require(
        len(set(data.horizons)) == len(data.horizons),
        "data.horizons",
        "no duplicates",
        data.horizons,
    )
    _require(len(set(data.lags)) == len(data.lags), "data.lags", "no duplicates", data.lags)
    _require(
        len(set(data.features)) == len(data.features) and data.target not in data.features,
        "data.features",
        f"distinct columns other than the target {data.target!r} (its lags are always there)",
        list(data.features),
    )
    if data.source in ("panel",):
        _require(data.path is not None, "data.path", "a file path for source 'panel'", data.path)

    start = _month(window.start_date, "rolling_window.start_date")
    end = _month(window.end_date, "rolling_window.end_date")
    _require(
        end >= start,
        "rolling_window.end_date",
        f"a date on or after rolling_window.start_date ({window.start_date})",
        window.end_date,
    )
    if window.calibration_start is not None:
        warm = _month(window.calibration_start, "rolling_window.calibration_start")
        _require(
            warm <= start,
            "rolling_window.calibration_start",
            f"null or a date on or before rolling_window.start_date ({window.start_date})",
            window.calibration_start,
        )
    names = list(config.models.names())
    for name in config.runtime.task_timeout_s_by_model:
        _require(name in names, f"runtime.task_timeout_s_by_model.{name}", f"one of {names}", name)
    if config.runtime.scheduler_address:
        parse_address(config.runtime.scheduler_address)
    tls = config.runtime.tls_cert_file, config.runtime.tls_key_file
    _require(
        (tls[0] is None) == (tls[1] is None),
        "runtime.tls_key_file",
        "tls_cert_file and tls_key_file both set or both null",
        tls,
    )
    evaluation = config.evaluation
    _require(
        evaluation.benchmark in names,
        "evaluation.benchmark",
        f"one of the models {names}",
        evaluation.benchmark,
    )
    for member in evaluation.combo.members:
        _require(member in names, "evaluation.combo.members", f"models among {names}", member)
    _check_fan_countries(config)
    longest = max(data.horizons)
    _require(
        window.size > longest,
        "rolling_window.size",
        f"more months than the longest horizon ({longest}) so that a training pair exists",
        window.size,
    )
    _require(
        len(config.models.enabled()) > 0, "models", "at least one enabled model", "all disabled"
    )
    _require(
        sorted(config.model_names) == sorted(config.models.entries),
        "model_names",
        f"the keys of models {list(config.models.entries)} (derived: never set it)",
        list(config.model_names),
    )


def _check_fan_countries(config: StudyConfig) -> None:
    """Fan countries the data cannot have: against data.countries, or the synthetic panel's
    names (other sources are checked against the prepared panel, before assemble draws)."""
    fans, data = config.evaluation.fan_countries, config.data
    known: list[str] | None = None
    if fans is not None and data.countries is not None:
        known = list(data.countries)
    elif fans is not None and data.source == "synthetic":
        known = data.synthetic.country_names()
    if known is not None:
        unknown = [c for c in fans if c not in known]
        shown = known if len(known) <= 12 else [*known[:12], "..."]
        _require(not unknown, "evaluation.fan_countries", f"countries of the data {shown}", unknown)


def _require(ok: bool, key: str, allowed: str, given: Any) -> None:
    if not ok:
        raise ConfigError(key, allowed, given)


def _month(value: str, key: str) -> int:
    """The month index (year * 12 + month - 1) of a date that must be a month's first day.

    pandas' parser defines what is accepted; an ISO day ('2018-01-01') is read here with the
    same result, so validating the usual config imports no pandas (0.3 CPU-s of a no-op run).
    """
    day = iso_day(value) if isinstance(value, str) else None
    if day is None:  # any other spelling, or no such day (2018-02-30): pandas' message
        return _month_by_pandas(value, key)
    if day.day != 1:
        raise ConfigError(key, "the first day of a month, like '2018-01-01'", value)
    return day.year * 12 + day.month - 1


def _month_by_pandas(value: Any, key: str) -> int:
    """Any other spelling ('2018-01', 'Jan 2018', '20180101'): as pd.Timestamp reads it."""
    import pandas as pd

    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if stamp is pd.NaT:  # '' and 'NaT' parse as "no date"
        raise ConfigError(key, "a date like '2018-01-01'", value)
    if stamp != stamp.to_period("M").to_timestamp():
        raise ConfigError(key, "the first day of a month, like '2018-01-01'", value)
    return stamp.year * 12 + stamp.month - 1
