"""Group ids of a table's rows from integer key codes (pure): the sorted groupbys of the metric
tables without re-hashing and re-sorting the key columns for every table.

`Keys(rows)` factorizes each key column of `rows` once (sorted codes) and numbers the groups
of any subset of them (`ids`) as a sorted pandas groupby would. `group_mean` gives what
`rows.groupby(by, sort=True, observed=True).agg(N=size, name=mean, ...)` gives, bit for bit:
the means come from pandas' own grouped mean (its compensated sum over each group's rows in
row order) on one integer key, so only the key handling changed, not the arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_MAX_KEY = 2**62  # combined codes stay exact int64 below this
_INT = np.int32  # codes and group numbers: half the memory of int64 over millions of rows
# (int32 holds any code of a table under 2**31 rows; Keys refuses larger ones below)


@dataclass
class Groups:
    """Each kept row's group 0..n_groups-1 (numbered in sorted key order), which rows are kept
    (False where a key is missing: groupby drops those rows), and one row of each group."""

    ids: np.ndarray
    kept: np.ndarray | None  # None: every row is kept
    n_groups: int
    _first: np.ndarray | None = None

    @property
    def first(self) -> np.ndarray:
        """A row (position in `rows`) of each group: any row of a group has its key values."""
        if self._first is None:
            rows = np.arange(self.ids.size) if self.kept is None else np.flatnonzero(self.kept)
            self._first = np.empty(self.n_groups, dtype=np.int64)
            self._first[self.ids] = rows
        return self._first

    def mean(self, values: np.ndarray) -> np.ndarray:
        """The mean of `values` (one per row of `rows`) per group: pandas' grouped mean."""
        kept = values if self.kept is None else values[self.kept]
        sorted_means = _sorted_mean(self.ids, kept, self.n_groups)
        if sorted_means is not None:
            return sorted_means
        # the ids as a categorical's codes: pandas groups by them without hashing them again
        key = pd.Categorical.from_codes(self.ids, categories=pd.RangeIndex(self.n_groups))
        means = pd.Series(kept, copy=False).groupby(key, sort=True, observed=True).mean()
        return means.to_numpy()

    def size(self) -> np.ndarray:
        return np.bincount(self.ids, minlength=self.n_groups).astype(np.int64)


def _sorted_mean(ids: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray | None:
    """pandas' grouped mean where it takes `np.add.reduceat` (group ids sorted, no NaN, every
    group present: pandas 3.1's `BaseGrouper._reduceat_aggregate`), the same sums and division,
    without the int64 index arrays per row its groupby builds (~28 bytes a row at the CRPS
    table's million forecasts); None elsewhere (pandas' own kernel then, as before)."""
    if ids.size == 0 or values.dtype != np.float64 or values.ndim != 1:
        return None
    if not np.all(ids[1:] >= ids[:-1]) or np.isnan(values).any():
        return None
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if starts.size != n_groups:
        return None
    return np.add.reduceat(values, starts) / np.diff(starts, append=ids.size).astype(np.float64)


class Keys:
    """Sorted integer codes of `rows`' key columns, each column factorized once on first use.
    `dropna=False`: a missing key value is a value of its own (sorted last), not dropped."""

    def __init__(
        self,
        rows: pd.DataFrame,
        dropna: bool = True,
        parent: tuple[Keys, np.ndarray | None] | None = None,
    ) -> None:
        if len(rows) >= np.iinfo(_INT).max:
            raise ValueError(f"rows must number under 2**31 for int32 codes; got {len(rows)}")
        self.rows, self.dropna = rows, dropna
        self._parent = parent  # (keys of a larger table, these rows in it: a mask or positions)
        self._raw: dict[str, tuple[np.ndarray, int]] = {}
        self._missing: dict[str, bool] = {}
        self._groups: dict[tuple[str, ...], Groups] = {}

    def subset(self, rows: pd.DataFrame, where: np.ndarray, dropna: bool | None = None) -> Keys:
        """The keys of `rows`, the rows of this table at `where` (a mask or positions): their
        codes are taken from this table's, not factorized again."""
        dropna = self.dropna if dropna is None else dropna
        if where.dtype == bool and where.all():  # the same rows: share the codes (no copy)
            return Keys(rows, dropna, (self, None))
        # a mask is kept as a mask (a byte a row while these keys live, not an int64 position)
        return Keys(rows, dropna, (self, where))

    def _raw_codes(self, column: str) -> tuple[np.ndarray, int]:
        if column not in self._raw:
            if self._parent is not None:
                keys, where = self._parent
                codes, size = keys._raw_codes(column)
                # sorted codes stay sorted; None: every row of the parent's
                self._raw[column] = (codes if where is None else codes[where], size)
            elif isinstance(self.rows[column].dtype, pd.CategoricalDtype):
                # a categorical's own codes: groupby sorts by its categories' order too
                values = self.rows[column].cat
                size = len(values.categories)
                self._raw[column] = (values.codes.to_numpy(_small(size)), size)
            else:
                codes, uniques = pd.factorize(self.rows[column], sort=True)
                self._raw[column] = (codes.astype(_small(len(uniques))), len(uniques))
        return self._raw[column]

    def codes(self, column: str) -> tuple[np.ndarray, int]:
        """The column's codes in its sort order and the number of codes; a missing value is
        -1, or with `dropna=False` a code of its own after the others."""
        codes, size = self._raw_codes(column)
        if not self.dropna:
            missing = codes < 0
            if missing.any():
                return np.where(missing, size, codes), size + 1
        return codes, size

    def groups(self, by: Sequence[str]) -> Groups:
        """The groups of a sorted groupby on the columns `by` (in that order)."""
        by = tuple(by)
        if by not in self._groups:
            self._groups[by] = self._number(by)
        return self._groups[by]

    def forget_groups(self, keep: Sequence[Sequence[str]] = ()) -> None:
        """Drop the cached groups (an int32 per row each) of every grouping but `keep`'s: a
        caller that knows no later step groups by them frees them (they are made again if
        one does)."""
        kept = {tuple(by) for by in keep}
        self._groups = {by: groups for by, groups in self._groups.items() if by in kept}

    def _number(self, by: tuple[str, ...]) -> Groups:
        n = len(self.rows)
        combined, span, missing = np.zeros(n, dtype=np.int64), 1, None
        for column in by:  # one int64 per row, in place (millions of rows)
            codes, size = self.codes(column)
            if self.dropna and self._has_missing(column):
                missing = codes < 0 if missing is None else missing | (codes < 0)
            size = max(size, 1)
            if span * size >= _MAX_KEY:  # renumber densely (order kept) before overflow
                combined, uniques = pd.factorize(combined, sort=True)
                combined, span = combined.astype(np.int64), max(len(uniques), 1)
            combined *= size
            combined += codes
            span *= size
        kept = None if missing is None or not missing.any() else ~missing
        if kept is not None:
            combined = combined[kept]
        if span <= 4 * n + 1024:  # few possible keys: number the present ones by counting
            present = np.bincount(combined, minlength=span) > 0
            n_groups = int(present.sum())
            if n_groups == span:
                ids = combined.astype(_INT)
            else:
                ids = (np.cumsum(present) - 1).astype(_INT)[combined]
        else:
            ids, uniques = pd.factorize(combined, sort=True)
            ids, n_groups = ids.astype(_INT, copy=False), len(uniques)
        del combined
        return Groups(ids=ids, kept=kept, n_groups=n_groups)

    def _has_missing(self, column: str) -> bool:
        if column not in self._missing:
            self._missing[column] = bool(self._raw_codes(column)[0].min(initial=0) < 0)
        return self._missing[column]


def _small(size: int) -> type[np.signedinteger]:
    """The smallest integer type for codes -1..size (a missing value's own code included):
    a key column's codes take 1-4 bytes per row, not 8."""
    for kind in (np.int8, np.int16, np.int32):
        if size < np.iinfo(kind).max:
            return kind
    return np.int64


def group_mean(
    rows: pd.DataFrame,
    by: Sequence[str],
    out: Mapping[str, str | np.ndarray],
    keys: Keys | None = None,
) -> pd.DataFrame:
    """Row count N and the mean of each source (a column of `rows`, or an array with a value
    per row) as `name` per `by` group, sorted by the keys: what `rows.groupby(by, sort=True,
    observed=True).agg(N=size, name=mean)` gives with the index reset, the same values and
    dtypes. `keys`: the codes of `rows`, when already made."""
    by = list(by)
    values = {
        name: rows[source].to_numpy(np.float64) if isinstance(source, str) else source
        for name, source in out.items()
    }
    if rows.empty:  # pandas' own empty result (its dtypes)
        spec = {"N": (next(iter(values)), "size")} | {name: (name, "mean") for name in values}
        table = rows[by].assign(**values).groupby(by, sort=True, observed=True).agg(**spec)
        return table.reset_index().astype({"N": "int64"})
    groups = (keys if keys is not None and keys.rows is rows else Keys(rows)).groups(by)
    table = rows[by].iloc[groups.first].reset_index(drop=True)
    table["N"] = groups.size()
    for name, value in values.items():
        table[name] = groups.mean(np.asarray(value, dtype=np.float64))
    return table
