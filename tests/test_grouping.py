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


def test_interval_table_equals_the_merge_of_lower_and_upper_rows():
    """metrics' interval table pairs each forecast's lowest and highest level by its group
    number; a pandas merge of the two levels' rows (the former code) is the oracle, also
    where a model has one level only and where forecasts lack a level or an actual."""
    from pipeline.evaluation import metrics as ev

    rng = np.random.default_rng(3)
    grid = pd.MultiIndex.from_product(
        [["a", "b", "one"], ["AT", "BE"], [1, 3], pd.date_range("2019-01", periods=30, freq="MS"),
         [0.1, 0.5, 0.9]],
        names=["MODEL", "COUNTRY", "HORIZON", "WINDOW_END", "QUANTILE"],
    ).to_frame(index=False)  # fmt: skip
    grid = grid.loc[(grid["MODEL"] != "one") | (grid["QUANTILE"] == 0.5)]
    grid = grid.sample(frac=0.9, random_state=1).reset_index(drop=True)  # levels missing
    grid["TIME"] = grid["WINDOW_END"] + pd.DateOffset(months=1)
    grid["FORECAST"] = rng.normal(size=len(grid)).round(1)
    grid["ACTUAL"] = np.where(rng.random(len(grid)) < 0.05, np.nan, rng.normal(size=len(grid)))
    got = ev.interval_coverage(grid, by=["MODEL", "HORIZON"])

    rows = grid.dropna(subset=["ACTUAL", "FORECAST"])
    levels = rows.groupby("MODEL")["QUANTILE"].agg(LOWER="min", UPPER="max").reset_index()
    rows = rows.merge(levels, on="MODEL")
    key = ["MODEL", "COUNTRY", "HORIZON", "WINDOW_END"]
    inner = rows["LOWER"] < rows["UPPER"]
    lo = rows.loc[inner & (rows["QUANTILE"] == rows["LOWER"])]
    hi = rows.loc[inner & (rows["QUANTILE"] == rows["UPPER"]), [*key, "FORECAST"]]
    both = lo.merge(hi, on=key, suffixes=("_LO", "_HI"))
    both["HIT"] = (both["FORECAST_LO"] <= both["ACTUAL"]) & (both["ACTUAL"] <= both["FORECAST_HI"])
    both["W"] = both["FORECAST_HI"] - both["FORECAST_LO"]
    want = both.groupby(["MODEL", "HORIZON", "LOWER", "UPPER"]).agg(
        N=("W", "size"), COVERAGE=("HIT", "mean"), WIDTH=("W", "mean")
    )
    want = want.reset_index()
    assert got["MODEL"].tolist() == ["a", "a", "b", "b"]  # "one" has no interval
    assert got["N"].tolist() == want["N"].tolist()
    np.testing.assert_allclose(got["COVERAGE"], want["COVERAGE"], rtol=0, atol=0)
    np.testing.assert_allclose(got["WIDTH"], want["WIDTH"], rtol=1e-15)
    assert (got["NOMINAL"] == 0.8).all()


def _benchmark_merge(rows: pd.DataFrame, benchmark: str) -> pd.DataFrame:
    """The join metrics made with pandas before (the oracle)."""
    from pipeline.evaluation import metrics as ev

    bench = rows.loc[rows["MODEL"] == benchmark, [*ev.ROW_KEY, "LOSS"]]
    return rows.merge(bench.rename(columns={"LOSS": "BENCH_LOSS"}), on=list(ev.ROW_KEY))


@pytest.mark.parametrize("case", ["partial", "benchmark_only", "absent", "missing_key", "repeat"])
def test_the_benchmark_join_is_pandas_inner_merge(case):
    """Rows joined to the benchmark's loss by their row keys' group numbers: the rows and
    order, columns, dtypes, values and codes of pandas' inner merge on ROW_KEY, where the
    benchmark lacks rows or has others, is the only model, is absent, and (by the merge
    itself) where a key is missing or the benchmark repeats a row key."""
    from pipeline.evaluation import metrics as ev

    rng = np.random.default_rng(11)
    grid = pd.MultiIndex.from_product(
        [["rw", "ar_qr", "lqr"], ["AT", "BE", "CZ"], [1, 3], [0.1, 0.5, 0.9],
         pd.date_range("2019-01", periods=24, freq="MS")],
        names=["MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END"],
    ).to_frame(index=False)  # fmt: skip
    grid = grid.sample(frac=0.8, random_state=2)  # each model lacks some of the others' rows
    grid["TIME"] = grid["WINDOW_END"] + pd.DateOffset(months=1)
    grid["TARGET"] = "y"
    grid["FORECAST"], grid["ACTUAL"] = rng.normal(size=(2, len(grid)))
    grid.loc[rng.random(len(grid)) < 0.05, "ACTUAL"] = np.nan
    benchmark = "ar_qr"
    if case == "benchmark_only":
        grid = grid.loc[grid["MODEL"] == "ar_qr"]
    elif case == "absent":
        benchmark = "none"
    elif case == "missing_key":
        grid["COUNTRY"] = pd.array(grid["COUNTRY"], dtype="string")
        grid.iloc[::7, grid.columns.get_loc("COUNTRY")] = pd.NA
    elif case == "repeat":  # one row key twice for the benchmark (another origin's window)
        first = grid.loc[grid["MODEL"] == "ar_qr"].iloc[:1]
        grid = pd.concat([grid, first.assign(FORECAST=0.5)])
    rows = ev._scored(ev.compact_frame(grid))
    assert not rows.index.equals(pd.RangeIndex(len(rows)))  # the merge renumbers the rows
    joined, keys = ev._with_benchmark(rows, benchmark)
    want = _benchmark_merge(rows, benchmark)
    pd.testing.assert_frame_equal(joined, want, check_exact=True)
    assert (len(want) > 0) == (case != "absent")
    by = ["MODEL", "HORIZON", "QUANTILE"]
    assert keys.rows is joined
    np.testing.assert_array_equal(keys.groups(by).ids, ev.Keys(want).groups(by).ids)
