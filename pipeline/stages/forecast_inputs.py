"""What assemble reads: every train shard conformed to the forecast schema with the actuals
joined from the prepared panel (`read_forecasts`), and those forecasts matched to the fits the
config expects (`reconcile`: kept rows, missing fits with their REASON).

Both work on integer codes of the key columns (a million fits are three million rows): the
actuals are looked up in a (country, month) grid, rows are sorted and checked for repeats by
their codes, and forecasts are matched to expected fits by one int64 key per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import rank_codes
from pipeline.schema import (
    COUNTRY,
    FORECAST_COLUMNS,
    FORECAST_DTYPES,
    FORECAST_SORT,
    PANEL_FILE,
    TIME,
    Y_RAW,
)

# string columns assemble holds as categoricals (few distinct values over millions of rows)
LEAN_COLUMNS = ("COUNTRY", "TARGET", "MODEL")
# one forecast row per fit key; a missing fit is named by it
FIT_KEY = ("MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END")
MISSING_DTYPES = {**{c: FORECAST_DTYPES[c] for c in FIT_KEY}, "REASON": "string"}
assert FIT_KEY == FORECAST_SORT  # read_forecasts finds repeats as neighbours in sort order


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
    parts = [_read_shard(path) for path in shards]
    frame = parts[0] if len(parts) == 1 else _concat_lean(parts)
    del parts
    actuals = pd.read_parquet(panel_path, columns=[COUNTRY, TIME, Y_RAW])
    actuals = actuals.astype({COUNTRY: "string", TIME: "datetime64[ns]", Y_RAW: "float64"})
    if actuals.duplicated([COUNTRY, TIME]).any():  # the join repeats rows: reported below
        frame = frame.drop(columns="ACTUAL").merge(actuals, on=[COUNTRY, TIME], how="left")
        frame = frame.rename(columns={Y_RAW: "ACTUAL"})[list(FORECAST_COLUMNS)]
    else:
        frame["ACTUAL"] = _actuals(frame, actuals)
    codes = [rank_codes(frame[c]) for c in FORECAST_SORT]
    if not _sorted(codes):  # train writes its rows sorted: often none move
        order = np.lexsort(codes[::-1])  # stable: sort_values(FORECAST_SORT, kind="stable")
        frame = frame.take(order).reset_index(drop=True)
        codes = [c[order] for c in codes]
    same = np.ones(max(len(frame) - 1, 0), dtype=bool)  # a row equal to the one before it
    for c in codes:
        same &= c[1:] == c[:-1]
    dup = np.r_[same, False] | np.r_[False, same]
    if dup.any():
        sample = frame.loc[dup, list(FIT_KEY)].head(3).to_dict("records")
        raise ValueError(
            f"train shards must hold each (model, country, horizon, quantile, origin) once, and "
            f"the panel each (country, month) once; {int(dup.sum())} rows repeat, e.g. {sample}"
        )
    return frame


def lean_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its LEAN_COLUMNS categorical, categories sorted and all used (as
    `compact_frame` codes them, so the metric steps use these codes as they are): 1-2 bytes a
    row instead of an Arrow string's 8-byte offset and its characters (~40 B of a row's ~103
    at a million fits). Written tables cast them back to the schema's strings
    (`schema_dtypes`, `assemble_tables.arrow_table`)."""
    lean = {}
    for c in LEAN_COLUMNS:
        if c not in frame.columns:
            continue
        column = frame[c]
        if not isinstance(column.dtype, pd.CategoricalDtype):
            lean[c] = pd.Categorical(column)
            continue
        column = column.cat.remove_unused_categories()  # a read dictionary's: in read order
        categories = column.cat.categories
        if not categories.is_monotonic_increasing:
            column = column.cat.reorder_categories(categories.sort_values())
            categories = column.cat.categories
        string = pd.api.types.pandas_dtype(FORECAST_DTYPES[c])
        if categories.dtype != string:  # a read dictionary's `str`: as pd.Categorical codes
            column = column.cat.rename_categories(categories.astype(string))
        if column is not frame[c]:
            lean[c] = column
    return frame.assign(**lean) if lean else frame


def schema_dtypes(frame: pd.DataFrame) -> dict[str, object]:
    """The frame's dtypes as the forecast schema has them: a lean column's string dtype."""
    dtypes: dict[str, object] = dict(frame.dtypes.items())
    for c in LEAN_COLUMNS:
        if c in dtypes and isinstance(dtypes[c], pd.CategoricalDtype):
            dtypes[c] = pd.api.types.pandas_dtype(FORECAST_DTYPES[c])
    return dtypes


def _concat_lean(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """pd.concat of lean frames, their categoricals kept (pandas makes differing categories
    object columns): each part's on the sorted union of every part's categories."""
    for c in LEAN_COLUMNS:
        union = sorted(set().union(*(p[c].cat.categories.tolist() for p in parts)))
        for i, part in enumerate(parts):
            categories = part[c].cat.categories
            if categories.tolist() != union:
                union_index = pd.Index(union, dtype=categories.dtype)
                parts[i] = part.assign(**{c: part[c].cat.set_categories(union_index)})
    return pd.concat(parts, ignore_index=True)


def _sorted(codes: list[np.ndarray]) -> bool:
    """Whether the rows are in the order of their key codes (each row <= the next)."""
    n = codes[0].size if codes else 0
    undecided = np.ones(max(n - 1, 0), dtype=bool)  # equal on every key so far
    for c in codes:
        if (undecided & (c[1:] < c[:-1])).any():
            return False
        undecided &= c[1:] == c[:-1]
    return True


def _read_shard(path: Path) -> pd.DataFrame:
    """One shard in the schema's columns and dtypes (`conform_forecasts` without its sort:
    the rows are sorted once, after the join), its LEAN_COLUMNS categorical: read as Arrow
    dictionaries, never as a string per row (a million fits' shard then peaks ~40% lower)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    table = pq.read_table(path, read_dictionary=[c for c in LEAN_COLUMNS if c in names])
    # each string column one Arrow chunk (pandas' read leaves them in 64k-row chunks, and a
    # take of a chunked Arrow column, as in a sort or each forecast table's rows, was about
    # 7x slower); numbers become one numpy array anyway
    for i, column in enumerate(table.columns):
        plain = not pa.types.is_primitive(column.type) and not pa.types.is_dictionary(column.type)
        if column.num_chunks > 1 and plain:
            table = table.set_column(i, table.field(i), column.combine_chunks())
    # a column at a time, each Arrow buffer freed once converted (not the whole table beside
    # the frame)
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    for optional in ("ACTUAL", "ALPHA"):
        if optional not in frame.columns:
            frame[optional] = np.nan
    missing = [c for c in FORECAST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"forecast table lacks columns {missing}")
    frame = frame[list(FORECAST_COLUMNS)]
    # only the columns whose dtype differs (an astype of every column consolidated the frame's
    # float and date columns into 2-D blocks: a copy of each, ~55 B a row, at the read's peak)
    cast = {
        c: t
        for c, t in FORECAST_DTYPES.items()
        if not isinstance(frame[c].dtype, pd.CategoricalDtype) and frame[c].dtype != t
    }
    return lean_frame(frame.astype(cast) if cast else frame)


def _actuals(frame: pd.DataFrame, panel: pd.DataFrame) -> np.ndarray:
    """y_raw at each row's (COUNTRY, TIME), NaN where the panel has none (a left join on a
    panel without repeats), from a (country, month) grid."""
    countries = pd.Index(panel[COUNTRY].unique())
    times = np.unique(panel[TIME].to_numpy())
    if not len(countries) or not times.size or not len(frame):
        return np.full(len(frame), np.nan)
    grid = np.full((len(countries), times.size + 1), np.nan)  # the last column: no such TIME
    grid[countries.get_indexer(panel[COUNTRY]), np.searchsorted(times, panel[TIME].to_numpy())] = (
        panel[Y_RAW].to_numpy(np.float64)
    )
    # a row's country from the few distinct values, not a hash lookup per row
    row_codes, row_countries = pd.factorize(frame[COUNTRY])
    c = np.r_[countries.get_indexer(row_countries), -1][row_codes]  # -1: not in the panel
    t_values = frame[TIME].to_numpy()
    t = np.searchsorted(times, t_values)
    t[(t == times.size) | (times[np.minimum(t, times.size - 1)] != t_values)] = times.size
    return np.where(c >= 0, grid[c, t], np.nan)


def _check_expected(expected: pd.DataFrame) -> None:
    absent = [c for c in FIT_KEY if c not in expected.columns]
    if absent:
        raise ValueError(f"expected must have the columns {list(FIT_KEY)}; lacks {absent}")


def _fit_codes(frame: pd.DataFrame, wanted: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per row of each frame, equal iff the rows' FIT_KEY values are equal (float
    levels compared after rounding to 10 decimals, so 0.1 from two float paths matches;
    missing values match each other, as in a pandas merge)."""
    left, right = np.zeros(len(frame), np.int64), np.zeros(len(wanted), np.int64)
    room = np.iinfo(np.int64).max
    for column in FIT_KEY:
        a_codes, a_values = _factorize(frame[column], column)
        b_codes, b_values = _factorize(wanted[column], column)
        values = a_values.append(b_values).unique()  # the distinct values of both: few
        size = len(values) + 1  # the last code: missing
        room //= size
        if room < 1:  # beyond about 1e18 distinct fit keys
            raise OverflowError("too many distinct fit keys to code in one int64")
        for codes, own, out in ((a_codes, a_values, left), (b_codes, b_values, right)):
            code = np.r_[values.get_indexer(own), len(values)][codes]  # codes -1 -> missing
            out *= size
            out += code
    return left, right


def _factorize(column: pd.Series, name: str) -> tuple[np.ndarray, pd.Index]:
    """Codes (-1: missing) and distinct values of one key column, in the forecast dtypes."""
    if isinstance(column.dtype, pd.CategoricalDtype):  # expected_fits' columns, a lean frame's
        # the narrow codes as they are (an int64 copy of every row cost 8 B a row), and the
        # categories as the forecast dtype's values (a string column's, a float's rounded)
        categories = pd.Series(column.cat.categories)
        if name in ("MODEL", "COUNTRY"):
            categories = categories.astype(str)
        else:
            categories = _conformed(categories, name)
        return column.cat.codes.to_numpy(), pd.Index(categories)
    codes, values = pd.factorize(_conformed(column, name))
    return codes, pd.Index(values)


def _conformed(column: pd.Series, name: str) -> pd.Series:
    """A key column in the forecast dtype, QUANTILE rounded to 10 decimals."""
    if name == "QUANTILE":
        return column.astype("float64").round(10)
    return column.astype(FORECAST_DTYPES[name])


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
        _check_expected(expected)
        have, want = _fit_codes(frame, expected)
        # each expected fit once, in its first place (the merge's drop_duplicates); the rows
        # matched by a binary search in the sorted distinct fits (np.isin's sort of both
        # arrays together held ~5 int64 copies of every row)
        distinct, first = np.unique(want, return_index=True)
        del want
        at = np.searchsorted(distinct, have)
        keep = (
            distinct[np.minimum(at, max(distinct.size - 1, 0))] == have if distinct.size else at < 0
        )
        found = np.zeros(distinct.size, dtype=bool)
        found[at[keep]] = True
        del at, have, distinct
        lacking = np.sort(first[~found])
        absent = expected.iloc[lacking][key].astype({c: FORECAST_DTYPES[c] for c in key})
        absent = absent.reset_index(drop=True).assign(REASON="absent")
        n_unexpected = int((~keep).sum())
        if n_unexpected or not frame.index.equals(pd.RangeIndex(len(frame))):
            frame = frame.loc[keep].reset_index(drop=True)
    null = frame.loc[frame["FORECAST"].isna(), key].assign(REASON="no forecast")
    missing = pd.concat([absent, null], ignore_index=True).astype(MISSING_DTYPES)
    missing = missing.sort_values(key, kind="stable").reset_index(drop=True)
    return frame, missing, n_unexpected
