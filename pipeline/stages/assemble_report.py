"""What assemble's report says besides its tables and charts (the fan charts' countries and
horizons, the summary lines), the names it checks before writing, and the removal of files a
previous config left: the parts of stages/assemble.py that read the frame or the output dir but
compute no metric."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError
from pipeline.io import read_json
from pipeline.schema import META_FILE, SAFE_CODE

SAFE_NAME = re.compile(rf"^{SAFE_CODE}$")


def check_name(column: str, value: Any) -> None:
    """ValueError unless `value` is file-name safe (it names files and folders)."""
    if not SAFE_NAME.match(str(value)):
        raise ValueError(
            f"{column} values must be file-name safe (letters, digits, _ . -); got {value!r}"
        )


def _spread(values: Sequence[int], n: int) -> list[int]:
    """At most n values evenly spread from the first to the last (both kept)."""
    values = sorted(set(values))
    if len(values) <= n:
        return values
    picks = np.linspace(0, len(values) - 1, n).round().astype(int)
    return [values[i] for i in sorted(set(picks.tolist()))]


def fan_selection(
    frame: pd.DataFrame,
    countries: Sequence[str] | None = None,
    n_countries: int = 4,
    horizons: Sequence[int] | None = None,
    max_horizons: int = 4,
) -> list[tuple[str, int]]:
    """(country, horizon) pairs to draw, horizon-major: `countries` or the first `n_countries`
    alphabetically; `horizons` or at most `max_horizons` spread over the forecast horizons.
    Pairs without forecasts are skipped."""
    present = sorted(frame["COUNTRY"].unique().tolist())
    countries = present[:n_countries] if countries is None else list(countries)
    unknown = sorted(set(countries) - set(present))
    if unknown:  # a config error: exit 2 and one line at the command line
        raise ConfigError(
            "evaluation.fan_countries", f"countries with forecasts {present}", unknown
        )
    for country in countries:
        check_name("COUNTRY", country)
    all_h = sorted(frame["HORIZON"].unique().tolist())
    horizons = _spread(all_h, max_horizons) if horizons is None else sorted(set(horizons))
    pairs = frame[["COUNTRY", "HORIZON"]].drop_duplicates()  # not a Python loop over every row
    have = set(zip(pairs["COUNTRY"].tolist(), pairs["HORIZON"].tolist(), strict=True))
    return [(c, int(h)) for h in horizons for c in countries if (c, h) in have]


def fan_note_line(fans: list[tuple[str, int]], why: str) -> str:
    """The report's line on which countries have fan charts (and why, when the caller says)."""
    countries = list(dict.fromkeys(c for c, _ in fans))
    if not countries:
        return ""
    return f"Countries: {', '.join(countries)}" + (f" ({why})." if why else ".")


def report_summary(
    output_dir: Path, frame: pd.DataFrame, missing: pd.DataFrame, n_unexpected: int, benchmark: str
) -> dict[str, object]:
    """The report's summary lines: what the study holds (models, countries, horizons, levels,
    origins, rows, missing fits) and the data it was fitted on."""

    def listing(values: list[Any], limit: int = 12) -> str:
        text = ", ".join(str(v) for v in values[:limit])
        return f"{text}, … ({len(values)} in all)" if len(values) > limit else text

    models = sorted(frame["MODEL"].unique().tolist())
    origins = frame["WINDOW_END"]
    scored = frame["ACTUAL"].notna() & frame["FORECAST"].notna()
    summary: dict[str, object] = {
        "models": listing(models),
        "benchmark": benchmark if benchmark in models else f"{benchmark} (not in this run)",
        "countries": listing(sorted(frame["COUNTRY"].unique().tolist())),
        "horizons (months)": listing(sorted(frame["HORIZON"].unique().tolist())),
        "quantile levels": listing([f"{q:g}" for q in sorted(frame["QUANTILE"].unique().tolist())]),
        "origins": f"{origins.min():%Y-%m} to {origins.max():%Y-%m} ({origins.nunique()})"
        if len(frame)
        else "none",
        "forecast rows": f"{len(frame):,} ({int(scored.sum()):,} with a known actual)",
        "missing fits": f"{len(missing):,}",
    }
    if n_unexpected:
        summary["rows left out (not in this config)"] = f"{n_unexpected:,}"
    meta_path = output_dir / META_FILE
    if meta_path.exists():
        meta = read_json(meta_path)
        if "fingerprint" in meta:
            summary["data fingerprint"] = str(meta["fingerprint"])[:16]
        if "first_month" in meta and "last_month" in meta:
            summary["data months"] = f"{meta['first_month']} to {meta['last_month']}"
    return summary


def remove_stale(output_dir: Path, written: list[Path]) -> list[Path]:
    """Delete files an earlier assemble wrote that this one did not (a dropped model, horizon,
    country): only the product's own (its manifest, or its naming in a dir older versions
    wrote), never a user's file in these folders."""
    from pipeline.runtime.store.manifest import active

    ours = active(output_dir)
    ours.written.update(r for r in map(ours.rel, written) if r is not None)
    keep = {p.resolve() for p in written}
    patterns = [
        ("forecasts", "*.parquet"),
        ("reports", "*.png"),
        ("reports/fan", "*.png"),
        ("reports/tables", "*.parquet"),
        ("reports/plots", "*.csv"),
    ]
    removed = []
    for folder, pattern in patterns:
        for path in sorted((output_dir / folder).glob(pattern)):
            if path.resolve() not in keep and ours.owns(path) and not path.is_symlink():
                path.unlink()
                removed.append(path)
    if not ours.tracked:  # called outside a run (a library call): record what it wrote
        ours.save()
    return removed
