"""prepare: real Eurostat file, synthetic data, no look-ahead in imputation, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REAL_DATA

from pipeline.config import validate
from pipeline.config.defaults import with_defaults
from pipeline.data import DataError
from pipeline.data.features import build_panel, impute, month_mean_needed, regularize
from pipeline.io import read_json
from pipeline.schema import COUNTRY, META_FILE, PANEL_FILE, TIME, Y_RAW, Y, lag_column, lead_column
from pipeline.stages.prepare import complete_window_ends, prepare

ROOT = Path(__file__).resolve().parents[1]
REAL = REAL_DATA


def _config(tmp_path, **data):
    if data.get("source") == "eurostat":  # conf/data/eurostat.yaml's target
        data.setdefault("target", "prc_hicp_manr_CP00")
    return validate(with_defaults({"data": data, "runtime": {"output_dir": str(tmp_path)}}))


@pytest.fixture(scope="module")
def real_panel(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    config = _config(out, source="eurostat", path=str(REAL), target="prc_hicp_manr_CP00")
    result = prepare(config, ROOT)
    return result, pd.read_parquet(result.panel_path)


def test_real_file_all_38_countries_and_gaps_as_specified(real_panel):
    result, panel = real_panel
    raw = pd.read_csv(REAL)
    assert raw["COUNTRY"].nunique() == 38 and len(raw) == 38 * 336
    assert len(result.countries) + len(result.skipped) == 38
    first = panel.groupby(COUNTRY)[TIME].min()
    last = panel.groupby(COUNTRY)[TIME].max()
    # leading gaps dropped: the official series starts 2000-01; late starters start later
    assert first["DE"] == pd.Timestamp("2000-01-01")
    assert first["AL"] == pd.Timestamp("2016-12-01") and first["US"] == pd.Timestamp("2002-12-01")
    # a trailing gap is not invented: the UK stops where its data stops
    assert last["UK"] == pd.Timestamp("2020-11-01") and last["DE"] == pd.Timestamp("2024-12-01")
    assert panel[Y].notna().all()
    # lags and leads follow the definition exactly
    de = panel[panel[COUNTRY] == "DE"].set_index(TIME)
    assert de.loc["2010-06-01", lag_column(Y, 12)] == de.loc["2009-06-01", Y]
    assert de.loc["2010-06-01", lead_column(3)] == de.loc["2010-09-01", Y]
    assert np.isnan(de.loc["2024-12-01", lead_column(1)])
    meta = read_json(result.meta_path)
    assert meta["fingerprint"] == result.fingerprint and meta["target"] == "prc_hicp_manr_CP00"


def test_prepare_is_deterministic(real_panel, tmp_path):
    result, _ = real_panel
    again = prepare(_config(tmp_path, source="eurostat", path=str(REAL)), ROOT)
    assert again.fingerprint == result.fingerprint
    assert again.panel_path.read_bytes() == result.panel_path.read_bytes()


def test_short_country_is_skipped_and_listed(tmp_path):
    config = validate(
        with_defaults(
            {
                "data": {
                    "source": "eurostat",
                    "path": str(REAL),
                    "target": "prc_hicp_manr_CP00",
                    "countries": ["DE", "AL", "XK"],
                },
                "rolling_window": {"start_date": "2018-01-01", "end_date": "2019-12-01"},
                "runtime": {"output_dir": str(tmp_path)},
            }
        )
    )
    # naming a country and then losing it is an error, with the reason, before anything is written
    with pytest.raises(DataError, match=r"data.countries names \['AL', 'XK'\].*too little history"):
        prepare(config, ROOT)
    assert list(tmp_path.iterdir()) == []
    # without naming them, they are skipped and listed with their reason in meta.json
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, countries=None))
    result = prepare(config, ROOT)
    assert "DE" in result.countries and not {"AL", "XK"} & set(result.countries)
    assert "too little history" in result.skipped["AL"]
    skipped = read_json(tmp_path / META_FILE)["skipped"]
    assert {"AL", "XK"} <= skipped.keys() and skipped == result.skipped


def test_synthetic_panel_has_gaps_filled_without_look_ahead(tmp_path):
    result = prepare(_config(tmp_path, source="synthetic", target="inflation"), ROOT)
    panel = pd.read_parquet(result.panel_path)
    assert len(result.countries) == 25
    gap = panel[(panel[COUNTRY] == "C03") & panel[TIME].between("2010-05-01", "2010-07-01")]
    assert gap[Y_RAW].isna().all()
    before = panel[(panel[COUNTRY] == "C03") & (panel[TIME] == "2010-04-01")][Y].item()
    assert (gap[Y] == before).all()  # forward filled from the last observed month
    assert panel[(panel[COUNTRY] == "C02")][TIME].min() == pd.Timestamp("2003-01-01")


def test_imputation_never_uses_later_values():
    rng = np.random.default_rng(0)
    months = pd.date_range("2000-01-01", periods=40, freq="MS")
    frame = pd.DataFrame(
        {
            TIME: np.tile(months, 3),
            COUNTRY: np.repeat(["A", "B", "C"], 40),
            "x": rng.normal(size=120),
            "f": rng.normal(size=120),
        }
    )
    frame.loc[rng.random(120) < 0.3, ["x", "f"]] = np.nan
    frame.loc[(frame[COUNTRY] == "A") & (frame[TIME] < "2000-06-01"), "f"] = (
        np.nan
    )  # late-starting feature
    cut = months[20]
    base = impute(frame, ["x", "f"], "forward_fill_then_mean")
    perturbed_frame = frame.copy()
    later = perturbed_frame[TIME] > cut
    perturbed_frame.loc[later, ["x", "f"]] = rng.normal(size=(later.sum(), 2)) * 100
    perturbed = impute(perturbed_frame, ["x", "f"], "forward_fill_then_mean")
    upto = base[TIME] <= cut
    pd.testing.assert_frame_equal(base[upto], perturbed[upto])


def test_build_panel_with_extra_feature_lags():
    months = pd.date_range("2000-01-01", periods=30, freq="MS")
    raw = pd.DataFrame(
        {TIME: months, COUNTRY: "A", "y0": np.arange(30.0), "z": np.arange(30.0) * 10}
    )
    panel = build_panel(
        raw, "y0", ["z"], lags=[0, 1, 12], horizons=[2], missing="forward_fill_then_mean"
    )
    row = panel.set_index(TIME).loc["2001-03-01"]
    assert (
        row[lag_column(Y, 12)] == 2.0
        and row[lag_column("z", 1)] == 130.0
        and row[lead_column(2)] == 16.0
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f, p: p.unlink(), "does not exist"),
        (
            lambda f, p: f.drop(columns=["prc_hicp_manr_CP00"]).to_csv(p, index=False),
            "prc_hicp_manr_CP00",
        ),
        (
            lambda f, p: pd.concat([f, f.head(2)]).to_csv(p, index=False),
            "duplicate (TIME, COUNTRY)",
        ),
        (lambda f, p: f.assign(TIME=f["TIME"] + "-15").to_csv(p, index=False), "not monthly"),
    ],
)
def test_bad_input_clear_error_and_nothing_written(tmp_path, mutate, message):
    source = tmp_path / "panel.csv"
    frame = pd.read_csv(REAL, dtype={"TIME": "string"}).query("COUNTRY in ['DE', 'FR']")
    frame.to_csv(source, index=False)
    mutate(frame, source)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare(_config(out, source="eurostat", path=str(source)), ROOT)
    assert not (out / PANEL_FILE).exists()


@pytest.mark.parametrize(
    "countries", [["DE", "FR", "IT"], ["AL", "DE", "EE", "FR", "IT", "MT", "US", "XK"]]
)
def test_small_panel_built_in_pandas_has_the_dask_paths_bytes(tmp_path, monkeypatch, countries):
    # features that start later than the target in some countries: their gaps take the
    # cross-country month means, the arithmetic the two paths compute separately
    features = ["prc_hicp_manr_CP01111", "prc_hicp_midx_CP00_I05"]
    data = dict(
        source="eurostat",
        path=str(REAL),
        countries=countries,
        features=features,
        max_abs_value=None,
    )
    raw = pd.read_csv(REAL)
    raw = raw[raw[COUNTRY].isin(countries)]
    late = raw.groupby(COUNTRY)[features[0]].apply(lambda s: s.first_valid_index())
    assert late.nunique() > 1  # the month means are used

    in_memory = prepare(_config(tmp_path / "pandas", **data), ROOT)
    monkeypatch.setattr("pipeline.stages.prepare.IN_MEMORY_COUNTRIES", 0)
    with_dask = prepare(_config(tmp_path / "dask", **data), ROOT)
    assert in_memory.panel_path.read_bytes() == with_dask.panel_path.read_bytes()
    assert in_memory.fingerprint == with_dask.fingerprint
    assert in_memory.meta_path.read_bytes() == with_dask.meta_path.read_bytes()


def test_large_panel_without_month_means_built_in_pandas_has_the_dask_paths_bytes(
    tmp_path, monkeypatch
):
    # 38 countries, no extra feature: the month means (the one place the two paths' arithmetic
    # differs) are never read, so pandas builds the panel whatever its size
    data = dict(source="eurostat", path=str(REAL), missing="forward_fill_then_mean")

    def no_dask(*args, **kwargs):
        raise AssertionError("built with dask")

    with monkeypatch.context() as patch:
        patch.setattr("pipeline.stages.prepare._build_with_dask", no_dask)
        in_memory = prepare(_config(tmp_path / "pandas", **data), ROOT)
    monkeypatch.setattr("pipeline.stages.prepare.month_mean_needed", lambda *a: True)
    with_dask = prepare(_config(tmp_path / "dask", **data), ROOT)
    assert len(in_memory.countries) > 30
    assert in_memory.panel_path.read_bytes() == with_dask.panel_path.read_bytes()
    assert in_memory.meta_path.read_bytes() == with_dask.meta_path.read_bytes()


def test_month_means_needed_only_for_a_feature_starting_after_the_target():
    months = pd.date_range("2000-01-01", periods=6, freq="MS")
    raw = pd.DataFrame(
        {
            TIME: np.tile(months, 2),
            COUNTRY: np.repeat(["A", "B"], 6),
            "y0": [np.nan, 1.0, np.nan, 2.0, 3.0, np.nan] * 2,  # gaps: forward filled
            "f": [np.nan, 5.0, 6.0, np.nan, 7.0, 8.0] * 2,  # starts with the target
        }
    )
    ffill = "forward_fill_then_mean"
    assert not month_mean_needed(raw, "y0", [], ffill)
    assert not month_mean_needed(raw, "y0", ["f"], ffill)
    raw.loc[(raw[COUNTRY] == "B") & (raw[TIME] == months[1]), "f"] = np.nan  # B's starts later
    assert month_mean_needed(raw, "y0", ["f"], ffill)
    assert not month_mean_needed(raw, "y0", ["f"], "drop")


def test_regularize_is_independent_of_row_order_and_drops_rows_without_country_or_month():
    rng = np.random.default_rng(3)
    months = pd.date_range("2001-01-01", periods=30, freq="MS")
    raw = pd.DataFrame(
        {
            TIME: np.tile(months, 3),
            COUNTRY: pd.array(np.repeat(["B", "A", "C"], 30), dtype="string"),
            "y0": rng.normal(size=90),
            "f": rng.normal(size=90),
        }
    )
    raw.loc[rng.random(90) < 0.2, "y0"] = np.nan
    raw = raw.drop(index=[5, 6, 40])  # months missing from the file: NaN rows
    expected = regularize(raw, "y0")
    assert expected[COUNTRY].tolist() == sorted(expected[COUNTRY].tolist())
    for country, group in expected.groupby(COUNTRY):
        observed = raw[(raw[COUNTRY] == country) & raw["y0"].notna()][TIME]
        assert group[TIME].tolist() == list(
            pd.date_range(observed.min(), observed.max(), freq="MS")
        )
    merged = expected.merge(raw, on=[TIME, COUNTRY], how="left", suffixes=("", "_file"))
    for column in ("y0", "f"):  # each value in its (country, month) row; NaN where none
        assert np.array_equal(merged[column], merged[f"{column}_file"], equal_nan=True)
    shuffled = raw.sample(frac=1.0, random_state=0)
    extra = pd.DataFrame(
        {
            TIME: [pd.NaT, months[3]],
            COUNTRY: pd.array(["A", None], dtype="string"),
            "y0": 1.0,
            "f": 1.0,
        }
    )
    pd.testing.assert_frame_equal(regularize(pd.concat([shuffled, extra]), "y0"), expected)


def test_complete_windows_never_run_across_countries_or_gaps():
    # B's months follow A's last month in the arrays (sorted by country, then month), and C's
    # have a gap at 2: neither continues a run
    country = np.array([0] * 5 + [1] * 5 + [2] * 5)
    month = np.array([*range(5), *range(5, 10), 0, 1, 3, 4, 5])
    ends_country, ends_month = complete_window_ends(country, month, 3)
    assert list(zip(ends_country.tolist(), ends_month.tolist(), strict=True)) == [
        (0, 2), (0, 3), (0, 4), (1, 7), (1, 8), (1, 9), (2, 5)
    ]  # fmt: skip
    assert complete_window_ends(country, month, 6)[0].size == 0
    assert complete_window_ends(country[:0], month[:0], 1)[0].size == 0
