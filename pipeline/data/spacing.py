"""When a panel's months are not what a monthly study assumes: rows dated in the future (an
error), and a country whose target has long gaps or arrives only every few months (a warning:
data.missing fills the months between, as documented, but the user is told once).

`regularize` (pipeline.data.features) lays each country out from its first to its last
observed month, so one stray row (a TIME of 2099-01 among data ending 2024) would add 75 years
of forward-filled months without a word; quarterly data would be repeated to monthly the same
silent way. Both checks read whole-column arrays (a panel of 11,000 countries: milliseconds).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from pipeline.data.errors import DataError
from pipeline.schema import COUNTRY, TIME, month_index

LONG_GAP_MONTHS = 12  # more missing months in a row than this: a year or more filled
FILLS = {
    "forward_fill_then_mean": "repeats the last value through the months between",
    "drop": "skips every fit whose window touches them",
}


def check_not_future(
    frame: pd.DataFrame, target: str, where: str, now: datetime | None = None
) -> None:
    """Raise DataError when a value of `target` is dated after the current month: an
    observation cannot come from the future (a typo such as 2099 for 2019, or a stray row),
    and the study would forward-fill every month up to it."""
    current = pd.Timestamp(now or datetime.now(UTC)).tz_localize(None).to_period("M").start_time
    future = (frame[TIME] > current).to_numpy() & frame[target].notna().to_numpy()
    if not future.any():
        return
    rows = frame.loc[future, [COUNTRY, TIME]].sort_values(TIME, kind="stable")
    sample = [f"{c} {t:%Y-%m}" for c, t in rows.head(3).itertuples(index=False)]
    n = int(future.sum())
    raise DataError(
        f"{where}: {n} value{'s' if n > 1 else ''} of {target} dated after this month "
        f"({current:%Y-%m}), e.g. {sample}; fix their TIME (a typo?) or remove those rows"
    )


def spacing_warnings(frame: pd.DataFrame, target: str, missing: str) -> list[str]:
    """One line for the countries observed only every few months (quarterly data?), one for
    those with a gap of more than LONG_GAP_MONTHS months: what data.missing does with them.
    `frame` is a checked tidy frame (check_tidy: unique (COUNTRY, TIME))."""
    has = frame[target].notna().to_numpy()
    if int(has.sum()) < 2:
        return []
    codes, names = pd.factorize(frame[COUNTRY][has], sort=True)
    months = np.asarray(month_index(frame[TIME].to_numpy()[has]), dtype=np.int64)
    step = np.diff(codes)
    if (step < 0).any() or ((step == 0) & (np.diff(months) < 0)).any():
        order = np.lexsort((months, codes))  # check_tidy sorts so; another caller may not
        codes, months = codes[order], months[order]
    same = codes[1:] == codes[:-1]  # consecutive observations of one country
    steps = np.diff(months)[same]
    owner = codes[1:][same]
    start = months[:-1][same]
    fill = FILLS.get(missing, "fills them as data.missing says")
    lines = []
    # a country observed every few months: most of its steps are 2 months or more (monthly
    # data with a few gaps has most steps of 1); its usual step is the median one
    wide = np.bincount(owner, weights=steps >= 2, minlength=len(names))
    total = np.bincount(owner, minlength=len(names))
    sparse = np.flatnonzero((total >= 2) & (wide * 2 > total))
    if sparse.size:
        first = sparse[0]
        step = int(np.median(steps[owner == first]))
        more = [str(names[c]) for c in sparse[1:4]]
        others = f" (and {sparse.size - 1} more: {', '.join(more)})" if more else ""
        lines.append(
            f"{names[first]}{others} has a value of {target} only every {step} months "
            f"(quarterly data?); data.missing={missing} {fill} (the documented policy): "
            "give monthly values if that is not what you want"
        )
    long = np.flatnonzero(steps > LONG_GAP_MONTHS + 1)
    if long.size:
        at = long[np.argmax(steps[long])]  # the longest gap names the case
        n_more = np.unique(owner[long]).size - 1
        others = f" (and {n_more} more countries with gaps over a year)" if n_more else ""
        lines.append(
            f"{names[owner[at]]} has no value of {target} for {int(steps[at]) - 1} months, "
            f"from {_month(start[at] + 1)} to {_month(start[at] + steps[at] - 1)}{others}; "
            f"data.missing={missing} {fill}: a stray row or a wrong TIME? fix it or remove it"
        )
    return lines


def _month(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"  # schema.month_index's inverse
