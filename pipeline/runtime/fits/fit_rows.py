"""A fit group's forecast rows as index arrays and labels (pure: numpy only).

What the readers of a group's results need (the progress store's rows and error records, the
forecast table's country codes), apart from how the groups are built (fit_groups.py): a
(fits, countries) mask expanded to one entry per forecast, a column of country names as
sorted codes, and origins as date labels.
"""

from __future__ import annotations

import numpy as np

from pipeline.schema import month_index


def expand_rows(
    rows: np.ndarray, fits: np.ndarray, n_horizons: int, n_quantiles: int
) -> tuple[np.ndarray, ...]:
    """Index arrays (fit, row, horizon index, quantile index), one entry per forecast of the
    fits `fits` (positions in `rows`, a (fits, countries) bool mask of the rows each fit
    forecasts), fit-major, then row, horizon, quantile."""
    fits = np.asarray(fits, dtype=np.int64)
    fr, cj = np.nonzero(rows[fits])
    hq = n_horizons * n_quantiles
    fi, cj = np.repeat(fits[fr], hq), np.repeat(cj, hq)
    hi = np.tile(np.repeat(np.arange(n_horizons), n_quantiles), fr.size)
    qi = np.tile(np.arange(n_quantiles), fr.size * n_horizons)
    return fi, cj, hi, qi


def sorted_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct strings among `values` (F, C), sorted (object array), and each element's
    index in them ((F * C,) int64, row-major): np.unique(return_inverse=True), sorting one row
    only where every row holds the same countries (a pooled group's: each fit forecasts every
    country)."""
    values = np.asarray(values, dtype=object)
    if values.ndim == 2 and values.shape[0] > 1 and (values == values[:1]).all():
        names, row = np.unique(values[0].astype(str), return_inverse=True)
        return names.astype(object), np.tile(row.reshape(-1).astype(np.int64), values.shape[0])
    names, codes = np.unique(values.astype(str).ravel(), return_inverse=True)
    return names.astype(object), codes.reshape(-1).astype(np.int64)


def origin_labels(origin: np.ndarray) -> np.ndarray:
    """'YYYY-MM-DD' of month indexes (object array), formatted once per distinct month."""
    months, inverse = np.unique(np.asarray(origin, dtype=np.int64), return_inverse=True)
    days = (months - month_index("1970-01-01")).astype("datetime64[M]").astype("datetime64[D]")
    labels = np.asarray(np.datetime_as_string(days, unit="D"), dtype=object)
    return labels[inverse.reshape(-1)] if months.size else np.array([], dtype=object)
