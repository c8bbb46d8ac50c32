"""`prepare`: raw panel -> cleaned panel with lag features and direct targets, plus a fingerprint.

Each panel is built by the pure `pipeline.data.features.build_panel` (whole-column arrays, no
loop over countries). Its one step whose bits depend on how the countries are split is the
cross-country month mean that the missing-value policy gives a feature starting later than the
target (`month_mean_needed`); only a panel that needs it and has more than
`IN_MEMORY_COUNTRIES` countries is built on dask.dataframe (countries as partitions, the means
one dask groupby). Every other panel is built in pandas in one piece, with the same bytes and
without dask's import (0.7-0.9 CPU-s, most of prepare's cost before). The result is written
atomically as one sorted parquet file (deterministic bytes) with `meta.json` beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import ConfigError, StudyConfig
from pipeline.data import DataError, load_raw
from pipeline.data.features import build_panel, month_mean_needed, panel_fingerprint
from pipeline.data.spacing import spacing_warnings
from pipeline.data.windows import add_months, origins
from pipeline.io import write_json, write_parquet
from pipeline.schema import (
    COUNTRY,
    META_FILE,
    PANEL_FILE,
    TIME,
    Y,
    lag_column,
    month_index,
    month_start,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    panel_path: Path
    meta_path: Path
    fingerprint: str
    countries: tuple[str, ...]
    skipped: dict[str, str]  # country -> reason


def needed_lags(config: StudyConfig) -> list[int]:
    """Every lag any enabled model reads: 0, data.lags, and each model's own (ar_qr: 0..p-1)."""
    from pipeline.models.plugins.registry import adapter_for

    lags = {0, *config.data.lags}
    for name in config.models.enabled():
        adapter = adapter_for(config, name)
        if adapter.lags is not None:
            lags |= {int(lag) for lag in adapter.lags(config)}
    return sorted(lags)


def prepare(config: StudyConfig, root: Path) -> PrepareResult:
    """Run the stage: load, select countries, build the panel, write panel + meta under output_dir."""
    panel, meta = build_prepared(config, root)
    out = config.output_dir
    write_parquet(out / PANEL_FILE, panel)
    write_json(out / META_FILE, meta)
    return PrepareResult(
        out / PANEL_FILE,
        out / META_FILE,
        meta["fingerprint"],
        tuple(meta["countries"]),
        meta["skipped"],
    )


def build_prepared(config: StudyConfig, root: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The prepared panel and its meta.json content, in memory (`--dry-run` plans on them
    without replacing a finished run's panel)."""
    data = config.data
    raw = load_raw(data, root, seed=config.seed)
    raw = _select_countries(raw, data.countries)
    raw, skipped = _drop_countries_without_values(raw, data.target)
    for line in spacing_warnings(raw, data.target, data.missing):  # quarterly data, long gaps
        log.warning("prepare: %s", line)
    if raw.empty:
        panel = raw
    elif raw[COUNTRY].nunique() <= IN_MEMORY_COUNTRIES:
        panel = _build_in_memory(raw, config)
    elif not month_mean_needed(raw, data.target, data.features, data.missing):
        # the month means, its only bits that depend on dask's partitions, are never read
        panel = build_panel(raw, **_panel_kwargs(config))
    else:
        panel = _build_with_dask(raw, config)
    full = panel
    window_ends = np.array([], dtype=np.int64)
    if not panel.empty:
        panel, too_short, window_ends = _drop_short_countries(panel, config)
        skipped.update(too_short)
    for country, reason in sorted(skipped.items()):
        log.warning("prepare: skipped %s: %s", country, reason)
    named_lost = sorted(set(data.countries or ()) & set(skipped))
    if named_lost:
        reasons = "; ".join(f"{c}: {skipped[c]}" for c in named_lost)
        raise DataError(
            f"data.countries names {named_lost}, but prepare would drop them ({reasons}); "
            "fix their data or remove them from data.countries"
        )
    if panel.empty and skipped and not set(skipped.values()) - {_NO_VALUE.format(data.target)}:
        raise DataError(
            f"no country has a usable value of {data.target!r} in {data.path or data.source}; "
            "check data.target and the file's values"
        )
    if panel.empty:
        raise _no_origin_fits(full, config, skipped)
    _warn_origins_outside(window_ends, config)
    fingerprint = panel_fingerprint(panel)
    countries = tuple(sorted(panel[COUNTRY].unique()))
    span = panel.groupby(COUNTRY, sort=True, observed=True)[TIME].agg(["min", "max"])
    meta = {
        "fingerprint": fingerprint,
        "target": data.target,
        "features": list(data.features),
        "lags": needed_lags(config),
        "horizons": list(data.horizons),
        "missing": data.missing,
        "countries": list(countries),
        "skipped": skipped,
        "rows": len(panel),
        "first_month": f"{panel[TIME].min():%Y-%m}",
        "last_month": f"{panel[TIME].max():%Y-%m}",
        "coverage": {
            str(country): {"first": f"{first:%Y-%m}", "last": f"{last:%Y-%m}"}
            for country, first, last in span.itertuples()
        },
    }
    return panel, meta


def _select_countries(raw: pd.DataFrame, countries: tuple[str, ...] | None) -> pd.DataFrame:
    if countries is None:
        return raw
    available = set(raw[COUNTRY].unique())
    unknown = [c for c in countries if c not in available]
    if unknown:
        raise DataError(
            f"data.countries lists {unknown}, which the data does not have; available: {sorted(available)}"
        )
    return raw[raw[COUNTRY].isin(countries)].reset_index(drop=True)


_NO_VALUE = "no usable value of {} (every value missing or read as missing)"


def _drop_countries_without_values(
    raw: pd.DataFrame, target: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Drop countries whose target is missing on every month; the reason goes to meta.json."""
    has_value = raw[target].notna().groupby(raw[COUNTRY], observed=True).any()
    empty = sorted(str(c) for c in has_value.index[~has_value.to_numpy()])
    reasons = {country: _NO_VALUE.format(target) for country in empty}
    return raw[~raw[COUNTRY].isin(empty)].reset_index(drop=True), reasons


# up to this many countries the panel is built in pandas even where it needs the month means:
# `_month_mean_as_dask` gives them dask's bits; tests/test_prepare.py checks both paths' bytes
IN_MEMORY_COUNTRIES = 8


def _panel_kwargs(config: StudyConfig) -> dict[str, Any]:
    data = config.data
    return dict(
        target=data.target,
        features=list(data.features),
        lags=needed_lags(config),
        horizons=list(data.horizons),
        missing=data.missing,
    )


def _build_in_memory(raw: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    month_mean = _month_mean_as_dask(raw, [config.data.target, *config.data.features])
    return build_panel(raw, month_mean=month_mean, **_panel_kwargs(config))  # sorted


def _month_mean_as_dask(raw: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The raw frame's month means with the dask path's arithmetic, so imputed values keep
    their bits: with one country per partition (up to 8 countries), dask sums each country's
    value per month (0 when missing), adds those sums in country order and divides by the
    count of values. pandas' own mean (compensated summation) can differ in the last bit."""
    raw = raw.sort_values(COUNTRY, kind="stable")
    months = raw[TIME].to_numpy()
    sums = raw[columns].fillna(0.0).groupby(months, sort=True).sum()
    counts = raw[columns].notna().groupby(months, sort=True).sum()
    return (sums / counts).rename_axis(TIME)


def _build_with_dask(raw: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    # here, not at the top: dask's import costs about 1 s, and only this path needs it
    import dask
    import dask.dataframe as dd

    columns = [config.data.target, *config.data.features]
    n_countries = max(1, raw[COUNTRY].nunique())
    frame = dd.from_pandas(raw.set_index(COUNTRY), npartitions=min(8, n_countries), sort=True)
    month_mean = frame.groupby(TIME)[columns].mean()
    kwargs = _panel_kwargs(config)
    meta = build_panel(raw.iloc[0:0], month_mean=None, **kwargs)
    built = frame.reset_index().map_partitions(
        lambda part, mean: build_panel(part, month_mean=mean, **kwargs) if len(part) else meta,
        month_mean,
        meta=meta,
    )
    with dask.config.set(scheduler="synchronous"):  # small data; avoid thread start-up per call
        panel = built.compute()
    return panel.sort_values([COUNTRY, TIME], kind="stable").reset_index(drop=True)


def _drop_short_countries(
    panel: pd.DataFrame, config: StudyConfig
) -> tuple[pd.DataFrame, dict[str, str], np.ndarray]:
    """Keep countries with a complete window (y and all lags on every month) at some origin.
    Returns the kept panel, the dropped countries' reasons and the months (indices) at which a
    kept country has a complete window."""
    window = config.rolling_window
    lags = needed_lags(config)
    complete = panel[[lag_column(Y, lag) for lag in lags]].notna().all(axis=1).to_numpy()
    codes, countries = pd.factorize(panel[COUNTRY], sort=True)
    months = month_index(panel[TIME])
    end_country, end_month = complete_window_ends(codes[complete], months[complete], window.size)
    ok = np.zeros(len(countries), dtype=bool)
    ok[end_country[np.isin(end_month, month_index(np.array(origins(window))))]] = True
    first_origin = min(origins(window))
    needs_from = add_months(first_origin, -(window.size - 1) - max(lags))
    span = panel.groupby(codes, sort=True)[TIME].agg(["min", "max"])
    skipped: dict[str, str] = {}
    for code in np.flatnonzero(~ok):
        first, last = span.at[code, "min"], span.at[code, "max"]
        if last < first_origin:  # not a matter of history: its data stop before the origins
            skipped[str(countries[code])] = (
                f"its data ({first:%Y-%m}..{last:%Y-%m}) end before the first origin "
                f"{first_origin:%Y-%m}"
            )
            continue
        skipped[str(countries[code])] = (
            f"too little history: data {first:%Y-%m}..{last:%Y-%m}, "
            f"but every origin needs {window.size} months plus {max(lags)} lags (the first "
            f"origin {first_origin:%Y-%m} needs data from {needs_from:%Y-%m})"
        )
    keep = ok[codes]
    kept = panel if keep.all() else panel[keep].reset_index(drop=True)
    return kept, skipped, end_month[ok[end_country]]


def _no_origin_fits(
    panel: pd.DataFrame, config: StudyConfig, skipped: dict[str, str]
) -> ConfigError:
    """Why no country kept a single origin, keyed by the setting to change: the window (no
    country has that many complete months anywhere) or the origins (they lie outside the
    months where a complete window exists). A few countries' reasons, not all of them: the
    log lists every one, and a panel of thousands would make a line of megabytes."""
    window = config.rolling_window
    first, last = min(origins(window)), max(origins(window))
    reasons = [f"{c}: {r}" for c, r in sorted(skipped.items())[:3]]
    more = f"; and {len(skipped) - 3} more (in the log)" if len(skipped) > 3 else ""
    why = "; ".join(reasons) + more
    ends = _window_ends(panel, config)
    if ends.size == 0:
        return ConfigError(
            "rolling_window.size",
            f"a window that fits the data: no country has {window.size} consecutive months "
            f"with the target and its lags ({why})",
            window.size,
        )
    earliest, latest = month_start(int(ends.min())), month_start(int(ends.max()))
    return ConfigError(
        "rolling_window.start_date",
        f"origins where some country has a complete {window.size}-month window, from "
        f"{earliest:%Y-%m} to {latest:%Y-%m} (set rolling_window.start_date and end_date "
        f"within them; {why})",
        f"{first:%Y-%m}..{last:%Y-%m}",
    )


def _window_ends(panel: pd.DataFrame, config: StudyConfig) -> np.ndarray:
    """The months (indices) at which some country of `panel` has a complete window."""
    if panel.empty:
        return np.array([], dtype=np.int64)
    lags = needed_lags(config)
    complete = panel[[lag_column(Y, lag) for lag in lags]].notna().all(axis=1).to_numpy()
    codes, _ = pd.factorize(panel[COUNTRY], sort=True)
    months = month_index(panel[TIME])
    return complete_window_ends(codes[complete], months[complete], config.rolling_window.size)[1]


def _warn_origins_outside(ends: np.ndarray, config: StudyConfig) -> None:
    """Origins before any country's first complete window or after its last one (`ends`: the
    months at which a kept country has one) get no fit (so no forecast and no `missing` row):
    say so, rather than shorten the study silently."""
    wanted = month_index(np.array(origins(config.rolling_window)))
    outside = wanted[(wanted < ends.min()) | (wanted > ends.max())]
    if outside.size:
        log.warning(
            "prepare: %d of %d origins (%s) have no country with a complete window (the data "
            "allow origins %s..%s): they are not fitted; set rolling_window.start_date and "
            "end_date within them",
            outside.size,
            wanted.size,
            ", ".join(f"{month_start(int(m)):%Y-%m}" for m in outside[:3])
            + (", ..." if outside.size > 3 else ""),
            f"{month_start(int(ends.min())):%Y-%m}",
            f"{month_start(int(ends.max())):%Y-%m}",
        )


def complete_window_ends(
    country: np.ndarray, month: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(country, month T) of every T whose months T - size + 1 .. T are all among the rows
    (`country` codes and month indices, sorted by country then month, unique): the ends of
    complete windows, found from each run of consecutive months in one pass over the arrays."""
    n = month.size
    position = np.arange(n)
    breaks = np.ones(n, dtype=bool)
    breaks[1:] = (country[1:] != country[:-1]) | (month[1:] != month[:-1] + 1)
    run_start = np.maximum.accumulate(np.where(breaks, position, 0))
    done = position - run_start + 1 >= size
    return country[done], month[done]
