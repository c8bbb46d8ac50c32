"""assemble's expected fits as codes (issue 18 item 6, second pass): `expected_fits` gives
the rows the int64 build gave, in ~7 bytes a row instead of 26, and `reconcile`'s binary
search gives what np.isin gave, bit for bit, on random frames."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SMALL_STUDY, make_config

from pipeline.data.prepared import load_panel
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.fit_groups import expand
from pipeline.runtime.fits.shared_plan import fit_groups, one_plan_per_run
from pipeline.schema import FORECAST_DTYPES, month_start
from pipeline.stages import forecast_inputs
from pipeline.stages.forecast_inputs import FIT_KEY, MISSING_DTYPES, reconcile
from pipeline.stages.study import EXPECTED_COLUMNS, expected_fits


def _old_expected_fits(config, panel) -> pd.DataFrame:
    """The int64 build (before this pass), kept here as the reference."""
    qs = np.asarray(config.data.quantiles, dtype=np.float64)
    models = list(config.models.enabled())
    cols: dict[str, list[np.ndarray]] = {c: [] for c in EXPECTED_COLUMNS}
    names: list[np.ndarray] = []
    for m, model in enumerate(models):
        for group in fit_groups(panel, config, adapter_for(config, model)):
            fi, cj, hi, qi = expand(group, np.arange(len(group)), len(qs))
            distinct, codes = np.unique(group.countries, return_inverse=True)
            cols["MODEL"].append(np.full(fi.size, m, dtype=np.int64))
            offset = sum(len(n) for n in names)
            cols["COUNTRY"].append(codes.reshape(group.countries.shape)[fi, cj] + offset)
            names.append(distinct.astype(str))
            cols["HORIZON"].append(np.asarray(group.horizons, dtype=np.int64)[hi])
            cols["QUANTILE"].append(qs[qi])
            cols["WINDOW_END"].append(group.origin[fi].astype(np.int64))
    data = {c: np.concatenate(v) for c, v in cols.items()}
    categories, country_code = np.unique(np.concatenate(names), return_inverse=True)
    frame = pd.DataFrame(
        {
            "MODEL": pd.Categorical.from_codes(data["MODEL"], categories=models),
            "COUNTRY": pd.Categorical.from_codes(
                country_code.reshape(-1)[data["COUNTRY"]], categories=categories.tolist()
            ),
            "HORIZON": data["HORIZON"],
            "QUANTILE": data["QUANTILE"],
        }
    )
    frame["WINDOW_END"] = month_start(data["WINDOW_END"])
    return frame


def _as_forecast_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: FORECAST_DTYPES[c] for c in EXPECTED_COLUMNS})


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    """The small study with every built-in model (pooled and per-country groups)."""
    from pipeline.stages.prepare import prepare

    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(Path(tmp_path_factory.mktemp("expected")) / "out")
    config = make_config(d)
    prepare(config, ROOT)
    return config


def test_expected_fits_are_the_int64_builds_rows_in_a_few_bytes_each(study) -> None:
    panel = load_panel(study.output_dir)
    with one_plan_per_run():  # both builds from the same groups
        new = expected_fits(study, panel)
        old = _old_expected_fits(study, panel)
    assert len(new) == len(old) > 0 and new["MODEL"].nunique() > 1
    pd.testing.assert_frame_equal(_as_forecast_dtypes(new), _as_forecast_dtypes(old))
    for c in EXPECTED_COLUMNS:  # codes, never a value per row
        assert isinstance(new[c].dtype, pd.CategoricalDtype), c
    # the memory property: 1 byte a code here (int16 for the countries or origins of a large
    # study); the int64 build held 26 B a row (int64 HORIZON, float QUANTILE, datetime)
    per_row = new.memory_usage(index=False, deep=True).sum() / len(new)
    old_per_row = old.memory_usage(index=False, deep=True).sum() / len(old)
    assert per_row <= 8 < old_per_row


def _old_reconcile(frame: pd.DataFrame, expected: pd.DataFrame):
    """reconcile with np.unique and np.isin (before this pass), kept here as the reference."""
    key = list(FIT_KEY)
    have, want = forecast_inputs._fit_codes(frame, expected)
    _, first = np.unique(want, return_index=True)
    first.sort()
    lacking = first[~np.isin(want[first], have)]
    absent = expected.iloc[lacking][key].astype({c: FORECAST_DTYPES[c] for c in key})
    absent = absent.reset_index(drop=True).assign(REASON="absent")
    keep = np.isin(have, want)
    n_unexpected = int((~keep).sum())
    if n_unexpected or not frame.index.equals(pd.RangeIndex(len(frame))):
        frame = frame.loc[keep].reset_index(drop=True)
    null = frame.loc[frame["FORECAST"].isna(), key].assign(REASON="no forecast")
    missing = pd.concat([absent, null], ignore_index=True).astype(MISSING_DTYPES)
    missing = missing.sort_values(key, kind="stable").reset_index(drop=True)
    return frame, missing, n_unexpected


def _random_fits(rng: np.random.Generator, n: int) -> pd.DataFrame:
    months = pd.date_range("2010-01", periods=30, freq="MS")
    return pd.DataFrame(
        {
            "MODEL": pd.array(rng.choice(["rw", "ar_qr", "zz"], n), dtype="string"),
            "COUNTRY": pd.array(rng.choice(["AT", "SE", "DE", "FR"], n), dtype="string"),
            "HORIZON": rng.choice([1, 3, 12], n).astype(np.int64),
            "QUANTILE": rng.choice([0.1, 0.5, 0.9], n),
            "WINDOW_END": months[rng.integers(0, months.size, n)],
        }
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconcile_matches_np_isin_bit_for_bit_on_random_fits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = _random_fits(rng, 3000).drop_duplicates(list(FIT_KEY)).reset_index(drop=True)
    frame["FORECAST"] = np.where(rng.random(len(frame)) < 0.05, np.nan, rng.normal(size=len(frame)))
    frame.loc[rng.integers(0, len(frame), 5), "HORIZON"] = 99  # rows no fit expects
    frame.loc[rng.integers(0, len(frame), 3), "QUANTILE"] = np.nan  # a missing key matches NaN
    # expected: most of the frame's fits (some from another float path), repeats, new fits
    expected = pd.concat(
        [frame[list(FIT_KEY)].sample(frac=0.8, random_state=seed), _random_fits(rng, 400)],
        ignore_index=True,
    )
    expected["QUANTILE"] = expected["QUANTILE"] + rng.choice([0.0, 1e-13], len(expected))
    coded = expected.astype({c: "category" for c in FIT_KEY})  # as expected_fits builds it
    shuffled = frame.sample(frac=1.0, random_state=seed)  # not a RangeIndex, not sorted
    for rows in (frame, shuffled):
        for wanted in (expected, coded):
            got, want = reconcile(rows, wanted), _old_reconcile(rows, expected)
            assert got[2] == want[2] > 0
            pd.testing.assert_frame_equal(got[0], want[0])
            pd.testing.assert_frame_equal(got[1], want[1])
            assert (got[1]["REASON"] == "absent").any()


def test_reconcile_with_no_expected_fits_keeps_nothing() -> None:
    frame = _random_fits(np.random.default_rng(3), 50).drop_duplicates(list(FIT_KEY))
    frame = frame.reset_index(drop=True).assign(FORECAST=1.0)
    kept, missing, n_unexpected = reconcile(frame, frame.iloc[:0][list(FIT_KEY)])
    assert len(kept) == 0 and len(missing) == 0 and n_unexpected == len(frame)
