"""What assemble reads: every train shard conformed to the forecast schema with the actuals
joined from the prepared panel (`read_forecasts`), and those forecasts matched to the fits the
config expects (`reconcile`: kept rows, missing fits with their REASON)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.schema import (
    COUNTRY,
    FORECAST_DTYPES,
    PANEL_FILE,
    TIME,
    Y_RAW,
    conform_forecasts,
    empty_forecast_frame,
)

# one forecast row per fit key; a missing fit is named by it
FIT_KEY = ("MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END")
MISSING_DTYPES = {**{c: FORECAST_DTYPES[c] for c in FIT_KEY}, "REASON": "string"}


# train shards up to this many bytes in all are read and joined in pandas: dask's import (about
# 1 CPU-s with distributed) is most of a small study's read (issue 18); the same frame either way
IN_MEMORY_BYTES = 64 * 2**20


def read_forecasts(output_dir: Path) -> pd.DataFrame:
    """Every train shard, conformed to the forecast schema, with ACTUAL joined from the panel."""
    output_dir = Path(output_dir)
    shards = sorted((output_dir / "train").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"no train shards in {output_dir / 'train'}: run the train stage first"
        )
    panel_path = output_dir / PANEL_FILE
    if not panel_path.exists():
        raise FileNotFoundError(f"no prepared panel at {panel_path}: run the prepare stage first")
    actual_types = {COUNTRY: "string", TIME: "datetime64[ns]", Y_RAW: "float64"}
    if sum(p.stat().st_size for p in shards) <= IN_MEMORY_BYTES:
        forecasts = pd.concat([_read_shard(str(p)) for p in shards], ignore_index=True)
        actuals = pd.read_parquet(panel_path, columns=[COUNTRY, TIME, Y_RAW]).astype(actual_types)
        frame = forecasts.merge(actuals, on=[COUNTRY, TIME], how="left")
    else:
        import dask.dataframe as dd

        forecasts = dd.from_map(_read_shard, [str(p) for p in shards], meta=_shard_meta())
        actuals = dd.read_parquet(str(panel_path), columns=[COUNTRY, TIME, Y_RAW])
        joined = forecasts.merge(actuals.astype(actual_types), on=[COUNTRY, TIME], how="left")
        frame = joined.compute()
    frame = conform_forecasts(frame.drop(columns="ACTUAL").rename(columns={Y_RAW: "ACTUAL"}))
    dup = frame.duplicated(list(FIT_KEY), keep=False)
    if dup.any():
        sample = frame.loc[dup, list(FIT_KEY)].head(3).to_dict("records")
        raise ValueError(
            f"train shards must hold each (model, country, horizon, quantile, origin) once, and "
            f"the panel each (country, month) once; {int(dup.sum())} rows repeat, e.g. {sample}"
        )
    return frame


def _shard_meta() -> pd.DataFrame:
    return empty_forecast_frame()


def _read_shard(path: str) -> pd.DataFrame:
    return conform_forecasts(pd.read_parquet(path))


def _conform_expected(expected: pd.DataFrame) -> pd.DataFrame:
    absent = [c for c in FIT_KEY if c not in expected.columns]
    if absent:
        raise ValueError(f"expected must have the columns {list(FIT_KEY)}; lacks {absent}")
    out = expected[list(FIT_KEY)].astype({c: FORECAST_DTYPES[c] for c in FIT_KEY})
    return out.drop_duplicates().reset_index(drop=True)


def reconcile(
    frame: pd.DataFrame, expected: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Match forecasts to the expected fits: (forecasts kept, missing fits, rows left out).

    A fit is missing when it is absent from train ("absent") or its FORECAST is null
    ("no forecast"). Without `expected`, only the null forecasts are listed and nothing is
    left out.
    """
    key = list(FIT_KEY)
    n_unexpected, absent = 0, frame.iloc[:0][key].assign(REASON="absent")
    if expected is not None:
        wanted = _conform_expected(expected)
        # float levels compared after rounding, so 0.1 from two float paths still matches
        left = wanted.assign(_Q=wanted["QUANTILE"].round(10))
        right = frame[key].assign(_Q=frame["QUANTILE"].round(10), _ROW=np.arange(len(frame)))
        on = [c for c in key if c != "QUANTILE"] + ["_Q"]
        matched = left.merge(right.drop(columns="QUANTILE"), on=on, how="left")
        absent = matched.loc[matched["_ROW"].isna(), key].assign(REASON="absent")
        keep = np.zeros(len(frame), dtype=bool)
        keep[matched["_ROW"].dropna().to_numpy(np.int64)] = True
        n_unexpected = int((~keep).sum())
        frame = frame.loc[keep].reset_index(drop=True)
    null = frame.loc[frame["FORECAST"].isna(), key].assign(REASON="no forecast")
    missing = pd.concat([absent, null], ignore_index=True).astype(MISSING_DTYPES)
    missing = missing.sort_values(key, kind="stable").reset_index(drop=True)
    return frame, missing, n_unexpected
