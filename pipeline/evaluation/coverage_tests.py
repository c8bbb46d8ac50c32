"""Coverage (backtesting) tests of a forecast table, per group (pure).

A *hit* is `1{y <= F}` (the convention of `metrics.coverage`); each group's hits (in time
order) go through Kupiec's unconditional coverage, Christoffersen's independence and
conditional coverage and Engle and Manganelli's dynamic quantile test, as defined (and
computed on one sequence) in `coverage_sequence`, whose public functions are importable from
here too.

Hits of an h-step forecast from monthly origins overlap by h - 1 months, so for h > 1 they are
serially dependent by construction: the independence and DQ tests then reject correct
forecasts too often and read as diagnostics, not as exact tests (SERIAL_DEPENDENCE_NOTE).

A table tests every model x horizon x level (x country), so some raw p-values fall below 5%
by chance alone: `coverage_tests` adds each test's p-value adjusted by Holm's step-down method
(P_UC_HOLM, P_IND_HOLM, P_CC_HOLM, P_DQ_HOLM; `pvalues.holm`, as the DM tables' P_HOLM). The
family is one test's rows of one call: one table (pooled, or per country) in one evaluation
period, every model x horizon x level (x country) cell with a p-value; NaN stays NaN and is not
counted.

The Model Confidence Set is in evaluation/mcs.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import xlogy

from pipeline.evaluation.coverage_sequence import DQ_LAGS, coverage_test_row
from pipeline.evaluation.coverage_sequence import (  # public here too
    christoffersen_conditional as christoffersen_conditional,
)
from pipeline.evaluation.coverage_sequence import (
    christoffersen_independence as christoffersen_independence,
)
from pipeline.evaluation.coverage_sequence import dq_test as dq_test
from pipeline.evaluation.coverage_sequence import kupiec as kupiec
from pipeline.evaluation.forecast_table import select_rows
from pipeline.evaluation.grouping import Keys
from pipeline.evaluation.pvalues import chi2_sf, holm

DQ_BATCH_BYTES = 32 << 20  # DQ designs solved at once (peak memory of the batched QR)
SERIAL_DEPENDENCE_NOTE = (
    "Hits of h > 1 forecasts from monthly origins overlap by h - 1 months, so they are "
    "serially dependent by construction: Christoffersen's independence test and the DQ test "
    "over-reject correct forecasts there; read them as diagnostics."
)

TEST_COLUMNS = tuple(coverage_test_row(np.array([1, 0]), np.zeros(2), 0.5))
# each test's p-value and its Holm adjustment over the table's cells (one sequence has none)
P_COLUMNS = ("P_UC", "P_IND", "P_CC", "P_DQ")
HOLM_COLUMNS = {p: f"{p}_HOLM" for p in P_COLUMNS}


def with_holm(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """A coverage-test table of both periods with the *_HOLM columns: tables written before them
    get them computed here, one family per test and PERIOD as `coverage_tests` makes them, so
    an older output dir's pages can be rebuilt."""
    if table is None or table.empty or all(c in table.columns for c in HOLM_COLUMNS.values()):
        return table
    by_period = table.groupby("PERIOD", sort=False)
    return table.assign(
        **{
            adjusted: by_period[p].transform(lambda v: holm(v.to_numpy(np.float64)))
            for p, adjusted in HOLM_COLUMNS.items()
        }
    )


def coverage_tests(
    frame: pd.DataFrame,
    *,
    by: Sequence[str],
    keys: Keys | None = None,
    where: np.ndarray | None = None,
) -> pd.DataFrame:
    """The tests per group of scored rows of a forecast table (`by` must include MODEL,
    HORIZON and QUANTILE), each p-value with its Holm adjustment over the groups (*_HOLM). Without COUNTRY in `by`, the countries' hit sequences (each in
    WINDOW_END order) are concatenated country by country: the tests' pooled form, whose
    transitions and DQ lags never cross from one country into the next (the first lags rows
    of each are dropped).

    Vectorised over the groups (one pass over the sorted rows, no Python loop per group):
    the same statistics as `coverage_test_row` on each group's sequence (tests compare).
    `keys`: the codes of `frame`'s columns (`Keys(frame, dropna=False)`), when already made;
    `where`: a mask of the rows to test (the same table as `frame.loc[where]`'s, without a
    copy of the frame's rows)."""
    by = list(by)
    order_by = [*by, "COUNTRY", "WINDOW_END"] if "COUNTRY" not in by else [*by, "WINDOW_END"]
    scored = (frame["ACTUAL"].notna() & frame["FORECAST"].notna()).to_numpy()
    if where is not None:
        scored = scored & where
    # only the columns the tests read: a copy of every column was the stage's peak memory
    rows = select_rows(frame, scored, list(dict.fromkeys([*order_by, "ACTUAL", "FORECAST"])))
    # a missing key sorts last as a value of its own; the rows sorted by one stable sort of
    # their groups' numbers (sorted key order): the order of a lexsort of the columns' codes
    if keys is None or keys.rows is not frame or keys.dropna:
        keys = Keys(frame, dropna=False)
    keys = keys.subset(rows, scored)
    order = np.argsort(keys.groups(order_by).ids, kind="stable")
    # the groups' and segments' numbers along that order (each a prefix of `order_by`)
    group = keys.groups(by).ids[order]
    segment_by = by if "COUNTRY" in by else [*by, "COUNTRY"]
    segment = keys.groups(segment_by).ids[order]
    del keys  # these rows' codes and numbers: not needed again (the tests' peak memory)
    n_groups = int(group[-1]) + 1 if group.size else 0
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if group.size else group
    # the keys as plain Python values, so the table's dtypes are those of a record table
    keys = pd.DataFrame.from_records(
        list(rows[by].iloc[order[starts]].itertuples(index=False, name=None)), columns=by
    )
    tau = keys["QUANTILE"].to_numpy(np.float64)
    actual = rows["ACTUAL"].to_numpy(np.float64)[order]
    forecast = rows["FORECAST"].to_numpy(np.float64)[order]
    del rows, order
    hits = (actual <= forecast).astype(np.float64)

    n = np.bincount(group, minlength=n_groups).astype(np.float64)
    n1 = np.bincount(group, weights=hits, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr_uc = -2.0 * (_loglik(n1, n - n1, tau) - _loglik(n1, n - n1, n1 / n))
    lr_uc = np.maximum(lr_uc, 0.0)  # NaN (n = 0 cannot occur here) stays NaN
    lr_ind = _independence_many(hits, group, segment, n_groups)
    lr_cc = lr_uc + lr_ind  # NaN when LR_IND is
    dq, dq_df = _dq_many(hits, forecast, tau, group, segment, n_groups)
    table = keys.assign(
        N=n.astype(np.int64),
        HIT_RATE=n1 / n,
        LR_UC=lr_uc,
        P_UC=chi2_sf(lr_uc, 1),
        LR_IND=lr_ind,
        P_IND=chi2_sf(lr_ind, 1),
        LR_CC=lr_cc,
        P_CC=chi2_sf(lr_cc, 2),
        DQ=dq,
        P_DQ=chi2_sf(dq, dq_df),
    )
    # each test's family: this call's cells (one table, one period)
    table = table.assign(**{a: holm(table[p].to_numpy()) for p, a in HOLM_COLUMNS.items()})
    return table[[*by, *TEST_COLUMNS, *HOLM_COLUMNS.values()]].reset_index(drop=True)


def _loglik(ones: np.ndarray, zeros: np.ndarray, p: np.ndarray) -> np.ndarray:
    return xlogy(ones, p) + xlogy(zeros, 1.0 - p)


def _independence_many(
    hits: np.ndarray, group: np.ndarray, segment: np.ndarray, n_groups: int
) -> np.ndarray:
    """Christoffersen's LR_ind per group from the transitions inside each segment (a
    country's sequence); NaN where a group has no transition."""
    inside = segment[1:] == segment[:-1]  # a transition i -> i + 1 within one segment
    kind = (2.0 * hits[:-1] + hits[1:])[inside].astype(np.int64)  # 0: 00, 1: 01, 2: 10, 3: 11
    flat = np.bincount(group[1:][inside] * 4 + kind, minlength=4 * n_groups)
    n00, n01, n10, n11 = flat.reshape(n_groups, 4).astype(np.float64).T
    from_0, from_1, total = n00 + n01, n10 + n11, n00 + n01 + n10 + n11
    with np.errstate(divide="ignore", invalid="ignore"):
        pi = (n01 + n11) / total
        # a state never seen has no terms (its counts are 0): any probability in [0, 1] will do
        pi01 = np.where(from_0 > 0, n01 / np.maximum(from_0, 1), 0.0)
        pi11 = np.where(from_1 > 0, n11 / np.maximum(from_1, 1), 0.0)
        restricted = _loglik(n01 + n11, n00 + n10, pi)
        markov = _loglik(n01, n00, pi01) + _loglik(n11, n10, pi11)
    stat = np.maximum(-2.0 * (restricted - markov), 0.0)
    return np.where(total == 0, np.nan, stat)


def _dq_many(
    hits: np.ndarray,
    forecast: np.ndarray,
    tau: np.ndarray,
    group: np.ndarray,
    segment: np.ndarray,
    n_groups: int,
    lags: int = DQ_LAGS,
) -> tuple[np.ndarray, np.ndarray]:
    """The DQ statistic and its degrees of freedom (rank of the design) per group, as
    `coverage_sequence._dq(_dq_design(...))` on each segment's rows stacked per group: the designs are padded
    with zero rows to one length (a zero row changes neither the projection nor the rank)
    and reduced by one batched QR (Householder: as stable as lstsq's SVD, about 5x cheaper)."""
    k = lags + 2
    stat, dof = np.full(n_groups, np.nan), np.ones(n_groups)
    if not hits.size:
        return stat, dof
    seg_start = np.r_[True, segment[1:] != segment[:-1]]
    position = np.arange(hits.size) - np.maximum.accumulate(
        np.where(seg_start, np.arange(hits.size), 0)
    )
    usable = np.flatnonzero(position >= lags)  # each lag stays inside the segment
    demeaned = hits - tau[group]
    owner = group[usable]
    count = np.bincount(owner, minlength=n_groups)
    solvable = count >= k + 1
    if not solvable.any():
        return stat, dof
    keep = solvable[owner]
    usable, owner = usable[keep], owner[keep]
    slots = np.flatnonzero(solvable)
    index = np.full(n_groups, -1)
    index[slots] = np.arange(slots.size)
    row_in_group = np.arange(usable.size) - np.r_[0, np.cumsum(count[slots])[:-1]][index[owner]]
    length = int(count[slots].max())
    # designs of DQ_BATCH_BYTES at a time: every design keeps one padded length, so each QR
    # is the one a single batch of all groups computed, with a bounded peak memory
    per_batch = max(1, DQ_BATCH_BYTES // (length * (k + 1) * 8))
    first = np.r_[0, np.cumsum(count[slots])]  # each slot's first entry in `usable`
    for b0 in range(0, slots.size, per_batch):
        b1 = min(b0 + per_batch, slots.size)
        part = slice(int(first[b0]), int(first[b1]))
        rows = usable[part]
        # each design with its target as a last column (the R of its QR holds R_x and Q'y),
        # column by column (each a contiguous row of `x`: the column-major layout LAPACK
        # copies each design into), then placed in the padded stack (no copy when every
        # group has `length` rows: a country's origins, say)
        x = np.empty((k + 1, rows.size))
        x[0] = 1.0
        for lag in range(1, lags + 1):
            np.take(demeaned, rows - lag, out=x[lag])
        np.take(forecast, rows, out=x[k - 1])
        np.take(demeaned, rows, out=x[k])
        if rows.size == (b1 - b0) * length:
            x = x.reshape(k + 1, b1 - b0, length)
        else:
            padded = np.zeros((k + 1, b1 - b0, length))
            padded[:, index[owner[part]] - b0, row_in_group[part]] = x
            x = padded
        r = np.linalg.qr(x.transpose(1, 2, 0), mode="r")
        del x
        # the fitted values' norm is that of Q'y's part in the range of R_x (whose singular
        # values are the design's), so the SVD is of k x k matrices, not of the designs
        u, s, _ = np.linalg.svd(r[:, :k, :k])
        # np.linalg.lstsq's and matrix_rank's cut-off, with each group's own row count
        batch = slots[b0:b1]
        m = np.maximum(count[batch], k)[:, None]
        kept = s > s[:, :1] * m * np.finfo(np.float64).eps
        projected = np.einsum("gkj,gk->gj", u, r[:, :k, k]) * kept
        stat[batch] = (projected**2).sum(axis=1) / (tau[batch] * (1.0 - tau[batch]))
        dof[batch] = kept.sum(axis=1)
    return stat, dof
