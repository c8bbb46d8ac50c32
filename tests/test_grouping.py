"""evaluation/grouping.py: the metric tables' groupbys from integer codes give pandas' own
results, bit for bit (the means come from pandas' compensated sums in row order)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.grouping import Keys, group_mean


def _rows(seed: int, n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    model = rng.choice(["rw", "ar_qr", "lqr"], n)
    country = np.where(rng.random(n) < 0.02, None, rng.choice(["AT", "BE", "CZ", "DE"], n))
    return pd.DataFrame(
        {
            # categories not in sorted order: groupby sorts by the categories' order
            "MODEL": pd.Categorical(model, categories=["rw", "lqr", "ar_qr", "unused"]),
            "COUNTRY": pd.array(country, dtype="string"),
            "HORIZON": rng.choice([12, 1, 3], n),
            "QUANTILE": np.where(rng.random(n) < 0.01, np.nan, rng.choice([0.9, 0.1, 0.5], n)),
            # values of very different sizes: the last bits depend on the summation
            "X": rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, n),
        }
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "by", [["MODEL"], ["MODEL", "HORIZON", "QUANTILE"], ["COUNTRY", "MODEL", "HORIZON"]]
)
def test_group_mean_is_pandas_groupby_bit_for_bit(seed, by):
    rows = _rows(seed)
    want = rows.groupby(by, sort=True, observed=True).agg(N=("X", "size"), M=("X", "mean"))
    want = want.reset_index().astype({"N": "int64"})
    got = group_mean(rows, by, {"M": "X"})
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # an array as the source, and codes taken from a larger table's
    keys = Keys(pd.concat([rows, rows.iloc[:100]], ignore_index=True))
    sub = keys.subset(rows, np.arange(len(rows)))
    got = group_mean(rows, by, {"M": rows["X"].to_numpy()}, sub)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    empty = group_mean(rows.iloc[:0], by, {"M": "X"})
    assert list(empty.columns) == [*by, "N", "M"] and empty.empty


def test_missing_keys_are_dropped_or_kept_as_their_own_value():
    rows = _rows(0)
    by = ["COUNTRY", "MODEL"]
    dropped = Keys(rows).groups(by)
    assert dropped.n_groups == 12 and dropped.ids.size == rows["COUNTRY"].notna().sum()
    kept = Keys(rows, dropna=False).groups(by)
    assert kept.n_groups == 15 and kept.ids.size == len(rows)
    # the missing country sorts last within its model, as sort_values puts it
    last = rows.iloc[kept.first[kept.ids.max()]]
    assert pd.isna(last["COUNTRY"]) and last["MODEL"] == "ar_qr"  # the last category seen
