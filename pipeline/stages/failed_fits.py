"""Which missing fits train tried and gave up on: REASON `failed` in forecasts/missing.parquet.

A fit absent from train/ is either never tried (REASON `absent`: a run stopped early) or tried
and failed on every attempt (`failed`: the progress store, which train writes, says so with
status `failed`; its errors are in progress/errors.parquet).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.errors import NoForecasts

log = logging.getLogger("pipeline")
ERRORS_EXPORT = Path("progress/errors.parquet")  # every failed attempt, with its traceback
PROGRESS_EXPORT = Path("progress/progress.parquet")  # an earlier qpipe's per-row export


def read_failed_fits(output_dir: Path) -> pd.DataFrame | None:
    """Fits with status `failed` in the progress store (or, from an earlier qpipe without one
    readable, in its per-row export), as FIT_KEY rows (None without either)."""
    from pipeline.runtime.store.progress import db_path
    from pipeline.runtime.store.progress_view import failed_rows

    failed = None
    db, path = db_path(output_dir), Path(output_dir) / PROGRESS_EXPORT
    if db.exists():
        try:
            failed = failed_rows(db)  # only the failed fits' rows (usually none)
        except sqlite3.DatabaseError as error:  # derived data: the next train rebuilds it
            log.warning(
                "progress store %s is unreadable (%s): failed fits read as absent", db, error
            )
    if failed is None:
        if not path.exists():
            return None
        columns = ["model", "country", "quantile", "horizon", "origin", "status"]
        failed = pd.read_parquet(path, columns=columns, filters=[("status", "==", "failed")])
    return pd.DataFrame(
        {
            "MODEL": failed["model"].astype("string"),
            "COUNTRY": failed["country"].astype("string"),
            "HORIZON": failed["horizon"].astype("int64"),
            "QUANTILE": failed["quantile"].astype("float64"),
            "WINDOW_END": pd.to_datetime(failed["origin"]).astype("datetime64[ns]"),
        }
    )


def label_failed(
    missing: pd.DataFrame, failed: pd.DataFrame | None, key: Sequence[str]
) -> pd.DataFrame:
    """`missing` with REASON `failed` (instead of `absent`) for the fits in `failed`, matched
    on `key` (assemble.FIT_KEY)."""
    if failed is None or failed.empty or missing.empty:
        return missing
    # float levels compared after rounding (as assemble.reconcile does)
    on = [c for c in key if c != "QUANTILE"] + ["_Q"]
    right = failed.assign(_Q=failed["QUANTILE"].round(10), _FAILED=True)
    flags = missing.assign(_Q=missing["QUANTILE"].round(10)).merge(
        right[[*on, "_FAILED"]].drop_duplicates(on), on=on, how="left"
    )
    is_failed = flags["_FAILED"].eq(True).to_numpy() & missing["REASON"].eq("absent").to_numpy()
    out = missing.copy()
    out.loc[is_failed, "REASON"] = "failed"
    return out


def no_forecasts(output_dir: Path, missing: pd.DataFrame) -> NoForecasts:
    """The error for a study without one forecast to assemble: how many fits it expected, why
    they are missing and where to look (before issue 18's fixes a later step misreported it as
    a config error at evaluation.fan_countries)."""
    reasons = missing["REASON"].value_counts().sort_index() if len(missing) else pd.Series()
    why = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
    counts = f"{len(missing)} forecasts expected: {why}" if why else "no forecast expected"
    return NoForecasts(
        f"no fit produced a forecast, so there is nothing to assemble ({counts}); the errors "
        f"are in {Path(output_dir) / ERRORS_EXPORT}, and `qpipe monitor --output-dir "
        f"{output_dir}` shows the run"
    )
