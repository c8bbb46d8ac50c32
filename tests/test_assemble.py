"""assemble on a small synthetic run: table naming and schema, actuals, metrics, idempotence,
missing fits, stale files."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError
from pipeline.evaluation import metrics as evaluate
from pipeline.io import write_parquet
from pipeline.schema import FORECAST_COLUMNS, FORECAST_DTYPES, conform_forecasts
from pipeline.stages import assemble_fork
from pipeline.stages.assemble import assemble

MODELS = ("ar_qr", "ensemble_nn", "lqr")
COUNTRIES = ("AT", "BE", "DE")
HORIZONS = (1, 12)
LEVELS = (0.1, 0.5, 0.9)
Z = np.array([-1.2815515655446004, 0.0, 1.2815515655446004])
ORIGINS = pd.date_range(
    "2019-01", periods=24, freq="MS"
)  # TIME reaches into COVID and past the data
LAST_MONTH = pd.Timestamp("2021-06")
HOLE = ("BE", pd.Timestamp("2019-09"))  # an unobserved month inside the panel


def _series(seed: int = 0) -> dict[str, pd.Series]:
    rng = np.random.default_rng(seed)
    months = pd.date_range("2015-01", LAST_MONTH, freq="MS")
    return {
        c: pd.Series(2 + np.cumsum(rng.normal(0, 0.3, months.size)), index=months)
        for c in COUNTRIES
    }


def _shard(model: str, series: dict[str, pd.Series], rng: np.random.Generator, horizons=HORIZONS):
    """One model's forecasts: a noisy centre plus a normal-ish fan (lqr gets ALPHA values)."""
    spread = {"ar_qr": 0.5, "ensemble_nn": 0.8, "lqr": 0.4}[model]
    parts = []
    for country in COUNTRIES:
        for h in horizons:
            times = ORIGINS + pd.DateOffset(months=h)
            last = series[country].loc[ORIGINS].to_numpy()
            centre = last + rng.normal(0, 0.3, ORIGINS.size)
            for q, z in zip(LEVELS, Z, strict=True):
                parts.append(pd.DataFrame({
                    "TIME": times, "COUNTRY": country, "TARGET": "prc_hicp_manr_CP00",
                    "MODEL": model, "QUANTILE": q, "HORIZON": h,
                    "WINDOW_START": ORIGINS - pd.DateOffset(months=47), "WINDOW_END": ORIGINS,
                    "FORECAST": centre + z * spread * np.sqrt(h),
                    "ACTUAL": 999.0,  # stale garbage: assemble must take actuals from the panel
                    "ALPHA": 0.01 if model == "lqr" else np.nan,
                }))  # fmt: skip
    return conform_forecasts(pd.concat(parts, ignore_index=True))


def make_run(root: Path, models=MODELS, horizons=HORIZONS, seed: int = 0) -> dict[str, pd.Series]:
    series = _series(seed)
    panel = pd.concat(
        [
            pd.DataFrame({"COUNTRY": c, "TIME": s.index, "y_raw": s.to_numpy()})
            for c, s in series.items()
        ]
    )
    panel.loc[(panel["COUNTRY"] == HOLE[0]) & (panel["TIME"] == HOLE[1]), "y_raw"] = np.nan
    panel = panel.assign(y=panel["y_raw"].ffill(), COUNTRY=panel["COUNTRY"].astype("string"))
    write_parquet(root / "data/prepared/panel.parquet", panel.reset_index(drop=True))
    rng = np.random.default_rng(seed + 1)
    for model in models:
        write_parquet(root / "train" / f"{model}.parquet", _shard(model, series, rng, horizons))
    return series


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parts[len(root.parts)] not in ("train", "data")
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pipeline.stages import charts

    root = tmp_path_factory.mktemp("run")
    series = make_run(root)
    with pytest.MonkeyPatch.context() as patch:  # every chart rendered in this process
        patch.setattr(charts, "FORK_MIN_CHARTS", 10**9)
        first = assemble(root, "prc_hicp_manr_CP00", fan_countries=("DE",))
        digests = _digests(root)
        second = assemble(root, "prc_hicp_manr_CP00", fan_countries=("DE",))
    return root, series, first, second, digests


def test_forecast_tables_are_named_and_shaped_like_the_seed(run):
    root, _, result, _, _ = run
    names = {p.name for p in (root / "forecasts").glob("*.parquet")}
    expected = {f"{m}_q{q:g}_h{h}.parquet" for m in MODELS for q in LEVELS for h in HORIZONS}
    assert names == expected | {"all.parquet", "missing.parquet"}
    assert "lqr_q0.1_h12.parquet" in names  # the seed's spelling
    assert {p.name for p in result.forecast_files} == expected
    arrow_types = {"datetime64[ns]": "timestamp[ns]", "string": ("string", "large_string"),
                   "float64": "double", "int64": "int64"}  # fmt: skip
    parts = []
    for path in sorted(result.forecast_files):
        schema = pq.read_schema(path)
        assert tuple(schema.names) == FORECAST_COLUMNS
        for name in schema.names:
            assert str(schema.field(name).type) in arrow_types[FORECAST_DTYPES[name]], name
        table = pd.read_parquet(path)
        model, q, h = re.fullmatch(r"(.+)_q([0-9.]+)_h(\d+)\.parquet", path.name).groups()
        assert set(table["MODEL"]) == {model}
        assert set(table["QUANTILE"]) == {float(q)} and set(table["HORIZON"]) == {int(h)}
        assert len(table) == len(COUNTRIES) * len(ORIGINS)
        assert (table["TIME"] == table["WINDOW_END"] + pd.DateOffset(months=int(h))).all()
        parts.append(table)
    combined = pd.read_parquet(root / "forecasts/all.parquet")
    assert tuple(combined.columns) == FORECAST_COLUMNS
    rebuilt = conform_forecasts(pd.concat(parts, ignore_index=True))
    pd.testing.assert_frame_equal(conform_forecasts(combined), rebuilt)
    assert result.n_rows == len(combined) == len(MODELS) * len(COUNTRIES) * len(HORIZONS) * 3 * 24
    lqr = combined[combined["MODEL"] == "lqr"]
    assert (lqr["ALPHA"] == 0.01).all() and combined.loc[
        combined["MODEL"] != "lqr", "ALPHA"
    ].isna().all()


def test_actuals_come_from_the_panel(run):
    root, series, _, _, _ = run
    table = pd.read_parquet(root / "forecasts/all.parquet")
    truth = np.array(
        [series[c].get(t, np.nan) for c, t in zip(table["COUNTRY"], table["TIME"], strict=True)]
    )
    hole = (table["COUNTRY"] == HOLE[0]) & (table["TIME"] == HOLE[1])
    truth[hole.to_numpy()] = np.nan
    np.testing.assert_array_equal(table["ACTUAL"].to_numpy(), truth)
    assert table.loc[table["TIME"] > LAST_MONTH, "ACTUAL"].isna().all()  # beyond the data
    assert (table["TIME"] > LAST_MONTH).any() and hole.any()
    assert not (table["ACTUAL"] == 999.0).any()


def test_metrics_json_matches_the_tables(run):
    root, _, _, _, _ = run
    metrics = json.loads((root / "metrics.json").read_text())
    frame = pd.read_parquet(root / "forecasts/all.parquet")
    pinball = evaluate.pinball(frame)
    for model in MODELS:
        for h in HORIZONS:
            for q in LEVELS:
                value = pinball.query("MODEL == @model and HORIZON == @h and QUANTILE == @q")[
                    "PINBALL"
                ]
                got = metrics["all"]["pinball"][model][f"h{h}"][f"q{q:g}"]
                assert got == pytest.approx(float(value.iloc[0]), rel=1e-5)
    assert set(metrics["all"]["dm"]) == {"ensemble_nn", "lqr"}
    assert metrics["ex_covid"]["n_scored"] < metrics["all"]["n_scored"]
    assert metrics["fits"] == {"rows": len(frame), "missing": 0, "unexpected": 0}
    summary = json.loads((root / "metrics_summary.json").read_text())
    assert set(summary) == {"all", "ex_covid"} and set(summary["all"]) == set(MODELS)
    # the headline (DVC's only `metrics:` file): pooled pinball and interval coverage per model
    headline = json.loads((root / "metrics_headline.json").read_text())
    assert list(headline) == ["pinball", "coverage", "coverage_nominal"]
    pooled = evaluate.pinball(frame, by=("MODEL",)).set_index("MODEL")["PINBALL"]
    interval = evaluate.interval_coverage(frame, by=("MODEL",)).set_index("MODEL")
    for model in MODELS:
        assert headline["pinball"][model] == pytest.approx(pooled[model], rel=1e-5)
        assert headline["coverage"][model] == pytest.approx(
            interval.loc[model, "COVERAGE"], rel=1e-5
        )
    assert headline["coverage_nominal"] == pytest.approx(LEVELS[-1] - LEVELS[0])
    tables = {p.stem: pd.read_parquet(p) for p in (root / "reports/tables").glob("*.parquet")}
    assert {"pinball", "relative_pinball", "coverage", "interval", "crps", "crossing", "dm"} <= set(
        tables
    )
    for name, table in tables.items():  # the decomposition (the costly one) is of "all" only
        periods = {"all"} if name == "pinball_decomposition" else {"all", "ex_covid"}
        assert table.columns[0] == "PERIOD" and set(table["PERIOD"]) == periods, name
    csv = pd.read_csv(root / "reports/plots/pinball_by_horizon.csv")
    assert list(csv.columns) == ["HORIZON", *MODELS] and csv["HORIZON"].tolist() == list(HORIZONS)


def test_assemble_is_idempotent_byte_for_byte(run):
    root, _, _, second, digests = run
    assert digests == _digests(root)
    assert len(digests) > 30  # tables, metrics, tables, charts, report all covered
    assert any(name.endswith(".png") for name in digests)
    assert second.removed == ()


def test_report_references_exactly_the_charts_written(run):
    root, _, result, _, _ = run
    html = (root / "reports/index.html").read_text()
    sources = set(re.findall(r'<img src="([^"]+)"', html))
    pngs = {str(p.relative_to(root / "reports")) for p in (root / "reports").rglob("*.png")}
    assert sources == pngs == {str(p.relative_to(root / "reports")) for p in result.images}
    assert {f"fan/DE_h{h}.png" for h in HORIZONS} == pngs - {
        "pinball_by_horizon.png",
        "coverage.png",
    }
    assert "http://" not in html and "https://" not in html and "<script" not in html


def _forks_seen(monkeypatch, kill: bool = False) -> list[int]:
    """Every fork assemble makes from now on (their pids), each killed at birth if `kill`,
    and the fork made however busy the machine."""
    import os
    import signal

    from pipeline.stages import assemble_fork

    monkeypatch.setattr(assemble_fork, "MIN_IDLE_CPUS", float("-inf"))  # however busy
    monkeypatch.setattr(assemble_fork, "cpus", lambda: 2)
    pids: list[int] = []

    class Seen(assemble_fork.Fork):
        def __init__(self, frame):
            super().__init__(frame)
            pids.append(self._pid)
            if kill:
                os.kill(self._pid, signal.SIGKILL)

    monkeypatch.setattr(assemble_fork, "Fork", Seen)
    return pids


def _fork_renders_all(monkeypatch) -> None:
    """Let the fork render every chart, not this process (finish waits for it first)."""
    from pipeline.stages import charts

    finish = charts.ChartRun.finish

    def after_the_fork(self, frame):
        if self._feeder is not None:
            self._feeder.join()
        return finish(self, frame)

    monkeypatch.setattr(charts.ChartRun, "finish", after_the_fork)


def _tables_from_the_fork(monkeypatch) -> list[str]:
    """The names of the test tables that came back from a fork."""
    from pipeline.stages import assemble as stage

    names: list[str] = []
    decode = stage.tables_from_ipc

    def recorded(data):
        tables = decode(data)
        names.extend(tables)
        return tables

    monkeypatch.setattr(stage, "tables_from_ipc", recorded)
    return names


@pytest.mark.skipif(not assemble_fork.can_fork(), reason="forks on Linux only")
@pytest.mark.parametrize("at_scale", [True, False], ids=["tests-and-charts", "charts-only"])
def test_the_fork_gives_the_same_bytes(run, tmp_path, monkeypatch, caplog, at_scale):
    """What a fork of assemble's process computes while the metric tables are computed here
    (at scale the test tables, decomposition and charts from the rows it shares; in a small
    study only the charts) is the bytes an in-process assemble writes: the whole output is.
    The fork is gone when assemble returns."""
    from conftest import process_alive

    from pipeline.stages import assemble as stage

    make_run(tmp_path)
    if at_scale:
        monkeypatch.setattr(stage, "FORK_TESTS_MIN_ROWS", 0)  # a fork for the test tables too
    pids = _forks_seen(monkeypatch)
    _fork_renders_all(monkeypatch)
    names = _tables_from_the_fork(monkeypatch)
    with caplog.at_level("INFO", logger="pipeline.stages.assemble"):
        assemble(tmp_path, "prc_hicp_manr_CP00", fan_countries=("DE",))
    assert "(4 rendered by the forked process)" in caplog.text
    tables = {"coverage_tests", "coverage_tests_by_country", "mcs", "pinball_decomposition"}
    assert (set(names) == tables) if at_scale else (names == [])  # few rows: tables here
    assert _digests(tmp_path) == run[4]
    assert len(pids) == 1 and not process_alive(pids[0])


@pytest.mark.skipif(not assemble_fork.can_fork(), reason="forks on Linux only")
def test_a_fork_at_scale_that_dies_changes_nothing(run, tmp_path, monkeypatch, caplog):
    """Killed (for memory, say) before it does anything: assemble does its work itself."""
    from pipeline.stages import assemble as stage

    make_run(tmp_path)
    monkeypatch.setattr(stage, "FORK_TESTS_MIN_ROWS", 0)
    pids = _forks_seen(monkeypatch, kill=True)
    names = _tables_from_the_fork(monkeypatch)
    with caplog.at_level("INFO", logger="pipeline.stages"):
        assemble(tmp_path, "prc_hicp_manr_CP00", fan_countries=("DE",))
    assert "the forked process failed" in caplog.text and names == []
    assert "(0 rendered by the forked process)" in caplog.text
    assert _digests(tmp_path) == run[4] and len(pids) == 1


def hang(frame, *args):
    """A fork's test tables that never come (a stuck child)."""
    import time

    time.sleep(600)


@pytest.mark.skipif(not assemble_fork.can_fork(), reason="forks on Linux only")
def test_a_fork_that_hangs_is_killed_and_its_work_done_here(run, tmp_path, monkeypatch, caplog):
    """A child that does not answer in time is killed (no process left behind) and assemble
    computes the tables and renders the charts itself: the same bytes."""
    from conftest import process_alive

    from pipeline.stages import assemble as stage

    make_run(tmp_path)
    monkeypatch.setattr(stage, "FORK_TESTS_MIN_ROWS", 0)
    monkeypatch.setattr(stage, "test_tables_ipc", hang)  # what the fork is asked to run
    monkeypatch.setattr(assemble_fork, "REPLY_TIMEOUT_S", 0.5)
    pids = _forks_seen(monkeypatch)
    with caplog.at_level("INFO", logger="pipeline.stages"):
        assemble(tmp_path, "prc_hicp_manr_CP00", fan_countries=("DE",))
    assert "the forked process failed" in caplog.text and "no answer in" in caplog.text
    assert _digests(tmp_path) == run[4]
    assert len(pids) == 1 and not process_alive(pids[0])


@pytest.mark.skipif(not assemble_fork.can_fork(), reason="forks on Linux only")
def test_a_failed_assemble_leaves_no_fork_behind(tmp_path, monkeypatch):
    """assemble fails while its fork computes (here: a chart cannot be drawn): the fork is
    killed, not waited for, and the error is the caller's."""
    from conftest import process_alive

    from pipeline.stages import assemble as stage
    from pipeline.stages import charts

    make_run(tmp_path)
    monkeypatch.setattr(stage, "FORK_TESTS_MIN_ROWS", 0)
    monkeypatch.setattr(stage, "test_tables_ipc", hang)
    pids = _forks_seen(monkeypatch)

    def broken(*args, **kwargs):
        raise OSError("no room for the charts")

    monkeypatch.setattr(charts, "plan_charts", broken)
    with pytest.raises(OSError, match="no room for the charts"):
        assemble(tmp_path, "prc_hicp_manr_CP00", fan_countries=("DE",))
    assert len(pids) == 1 and not process_alive(pids[0])


@pytest.mark.skipif(not assemble_fork.can_fork(), reason="forks on Linux only")
def test_a_forked_chart_process_that_dies_changes_nothing(run, tmp_path, monkeypatch, caplog):
    """Killed (for memory, say) before its first chart: assemble renders them all itself."""
    make_run(tmp_path)
    _forks_seen(monkeypatch, kill=True)
    with caplog.at_level("INFO", logger="pipeline.stages"):
        assemble(tmp_path, "prc_hicp_manr_CP00", fan_countries=("DE",))
    assert "the forked process died" in caplog.text
    assert "(0 rendered by the forked process)" in caplog.text
    assert _digests(tmp_path) == run[4]


def test_missing_fits_are_listed_and_stale_files_removed(tmp_path):
    make_run(tmp_path)
    train = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "train").glob("*.parquet"))])
    key = ["MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END"]
    expected = train[key].drop_duplicates()
    # the config also asks for country FR from lqr at one origin, which train never produced
    extra = pd.DataFrame({"MODEL": "lqr", "COUNTRY": "FR", "HORIZON": 1, "QUANTILE": list(LEVELS),
                          "WINDOW_END": ORIGINS[0]})  # fmt: skip
    # ... and not ensemble_nn at h=12: those rows are left out (and counted)
    expected = pd.concat(
        [expected[~((expected["MODEL"] == "ensemble_nn") & (expected["HORIZON"] == 12))], extra]
    )
    # one ar_qr fit failed: its forecast is null
    shard = pd.read_parquet(tmp_path / "train/ar_qr.parquet")
    failed = (
        (shard["COUNTRY"] == "DE") & (shard["HORIZON"] == 1) & (shard["WINDOW_END"] == ORIGINS[5])
    )
    write_parquet(
        tmp_path / "train/ar_qr.parquet", shard.assign(FORECAST=shard["FORECAST"].mask(failed))
    )

    result = assemble(tmp_path, "prc_hicp_manr_CP00", expected=expected,
                      n_fan_countries=1, max_fan_horizons=1)  # fmt: skip
    missing = pd.read_parquet(tmp_path / "forecasts/missing.parquet")
    assert list(missing.columns) == [*key, "REASON"]
    assert result.n_missing == len(missing) == 3 + 3
    absent = missing[missing["REASON"] == "absent"]
    assert set(absent["COUNTRY"]) == {"FR"} and sorted(absent["QUANTILE"]) == list(LEVELS)
    null = missing[missing["REASON"] == "no forecast"]
    assert set(null["MODEL"]) == {"ar_qr"} and set(null["WINDOW_END"]) == {ORIGINS[5]}
    assert result.n_unexpected == len(COUNTRIES) * 3 * len(ORIGINS)
    assert not (tmp_path / "forecasts/ensemble_nn_q0.5_h12.parquet").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fits"]["missing"] == 6 and metrics["fits"]["unexpected"] == result.n_unexpected
    assert (
        "<b>6</b> expected forecasts are missing" in (tmp_path / "reports/index.html").read_text()
    )
    assert [p.name for p in (tmp_path / "reports/fan").glob("*.png")] == ["AT_h1.png"]

    # the next config drops the benchmark and horizon 12, and disables ensemble_nn (an empty
    # shard): their tables and charts must go, and the study still assembles without the
    # benchmark-relative figures
    for path in (tmp_path / "train").glob("*.parquet"):
        path.unlink()
    make_run(tmp_path, models=("lqr",), horizons=(1,))
    empty = pd.read_parquet(tmp_path / "train/lqr.parquet").iloc[:0]
    write_parquet(tmp_path / "train/ensemble_nn.parquet", empty)
    again = assemble(tmp_path, "prc_hicp_manr_CP00", n_fan_countries=1, fan_horizons=(1,))
    names = sorted(p.name for p in (tmp_path / "forecasts").glob("*.parquet"))
    expected_names = [f"lqr_q{q:g}_h1.parquet" for q in LEVELS]
    assert names == sorted([*expected_names, "all.parquet", "missing.parquet"])
    assert {p.name for p in again.removed} >= {"ar_qr_q0.5_h1.parquet", "lqr_q0.9_h12.parquet"}
    assert pd.read_parquet(tmp_path / "forecasts/missing.parquet").empty
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["benchmark_present"] == 0 and "dm" not in metrics["all"]
    assert pd.read_parquet(tmp_path / "reports/tables/dm.parquet").empty
    assert "ar_qr (not in this run)" in (tmp_path / "reports/index.html").read_text()
    # the disabled model keeps an (empty) column, so `dvc plots` field lists stay valid
    csv = pd.read_csv(tmp_path / "reports/plots/coverage.csv")
    assert list(csv.columns) == ["QUANTILE", "nominal", "ensemble_nn", "lqr"]
    assert csv["ensemble_nn"].isna().all() and csv["lqr"].notna().all()


def test_inputs_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        assemble(tmp_path, "prc_hicp_manr_CP00")
    make_run(tmp_path, models=("lqr",), horizons=(1,))
    with pytest.raises(ValueError, match="target"):
        assemble(tmp_path, "another_target")
    with pytest.raises(ValueError, match="expected"):
        assemble(tmp_path, "prc_hicp_manr_CP00", expected=pd.DataFrame({"MODEL": ["ar_qr"]}))
    with pytest.raises(ValueError, match="n_fan_countries"):
        assemble(tmp_path, "prc_hicp_manr_CP00", n_fan_countries=0)
    with pytest.raises(ConfigError, match=r"evaluation\.fan_countries.*XX"):  # exit 2 at the CLI
        assemble(tmp_path, "prc_hicp_manr_CP00", fan_countries=("XX",))
    assert not (tmp_path / "forecasts").exists()  # nothing is written before the inputs pass


def test_assemble_adds_combo_and_calibrated_rows_and_scores_no_warmup(tmp_path):
    from pipeline.evaluation.calibration import CalibrationSettings
    from pipeline.evaluation.combination import combine
    from pipeline.evaluation.derived import DerivedSettings
    from pipeline.stages.assemble import read_forecasts

    root = tmp_path / "run"
    make_run(root)
    score_from = pd.Timestamp("2019-07-01")  # the first six origins are warm-up
    derived = DerivedSettings(
        combo_members=("ar_qr", "lqr"),
        calibration=CalibrationSettings("tracker", step=0.1, pool="country", min_history=0),
        score_from=score_from,
    )
    assemble(root, "prc_hicp_manr_CP00", derived=derived, window_size=12, mcs=(0.1, 50, 0))
    frame = pd.read_parquet(root / "forecasts/all.parquet")
    models = set(frame["MODEL"])
    assert models == {*MODELS, "combo", *(f"{m}_cal" for m in (*MODELS, "combo"))}
    assert frame["WINDOW_END"].min() == score_from  # warm-up origins are never scored
    # combo on the scored rows equals the combination of the raw members
    raw = read_forecasts(root)
    expected = combine(raw, ["ar_qr", "lqr"]).query("WINDOW_END >= @score_from")
    got = frame.query("MODEL == 'combo'").sort_values(
        ["COUNTRY", "HORIZON", "WINDOW_END", "QUANTILE"]
    )
    expected = expected.sort_values(["COUNTRY", "HORIZON", "WINDOW_END", "QUANTILE"])
    np.testing.assert_allclose(got["FORECAST"].to_numpy(), expected["FORECAST"].to_numpy())
    # the warm-up fed the tracker: the first scored calibrated forecast is already shifted
    first = frame.query("MODEL == 'ar_qr_cal' and WINDOW_END == @score_from and HORIZON == 1")
    plain = frame.query("MODEL == 'ar_qr' and WINDOW_END == @score_from and HORIZON == 1")
    assert not np.allclose(first["FORECAST"].to_numpy(), plain["FORECAST"].to_numpy())
    metrics = json.loads((root / "metrics.json").read_text())
    test = metrics["coverage_tests"]["ar_qr_cal"]["h1"]["q0.1"]
    assert set(test) == {
        "n",
        "hit_rate",
        "lr_uc",
        "p_uc",
        "lr_ind",
        "p_ind",
        "lr_cc",
        "p_cc",
        "dq",
        "p_dq",
        "p_uc_holm",
        "p_ind_holm",
        "p_cc_holm",
        "p_dq_holm",
    }
    assert (
        set(metrics["mcs"]["h1"]) == models
        and "serially dependent" in metrics["notes"]["coverage_tests"]
    )
    by_country = pd.read_parquet(root / "reports/tables/coverage_tests_by_country.parquet")
    assert set(by_country["COUNTRY"]) == set(COUNTRIES)
    page = (root / "reports/index.html").read_text()
    assert "Coverage tests" in page and "Model Confidence Set" in page and "reliability.png" in page
    # deterministic: assembling again gives the same bytes (chart included)
    before = _digests(root)
    assemble(root, "prc_hicp_manr_CP00", derived=derived, window_size=12, mcs=(0.1, 50, 0))
    assert _digests(root) == before and "reports/reliability.png" in before


def test_pinball_decomposition_adds_up_and_equals_model_diagnostics(run):
    """score = miscalibration - discrimination + uncertainty per (model, horizon, level) of the
    assembled forecasts, equal to a direct model_diagnostics call and to the pinball table."""
    from model_diagnostics.scoring import PinballLoss, decompose

    root = run[0]
    table = pd.read_parquet(root / "reports/tables/pinball_decomposition.parquet")
    frame = pd.read_parquet(root / "forecasts/all.parquet")
    scored = frame.dropna(subset=["ACTUAL", "FORECAST"])
    cells = scored.groupby(["MODEL", "HORIZON", "QUANTILE"]).size()
    assert len(table) == len(cells) == len(MODELS) * len(HORIZONS) * len(LEVELS)
    assert set(table["PERIOD"]) == {"all"} and table["N"].tolist() == cells.tolist()
    terms = table["MISCALIBRATION"] - table["DISCRIMINATION"] + table["UNCERTAINTY"]
    np.testing.assert_allclose(table["SCORE"], terms, rtol=1e-12, atol=1e-12)
    assert (table["MISCALIBRATION"] >= -1e-12).all() and (table["DISCRIMINATION"] >= -1e-12).all()
    pinball = pd.read_parquet(root / "reports/tables/pinball.parquet").query("PERIOD == 'all'")
    np.testing.assert_allclose(table["SCORE"], pinball["PINBALL"], rtol=1e-12)
    metrics = json.loads((root / "metrics.json").read_text())["pinball_decomposition"]
    for row in table.itertuples(index=False):
        part = scored.query("MODEL == @row.MODEL and HORIZON == @row.HORIZON")
        part = part[np.isclose(part["QUANTILE"], row.QUANTILE)]
        direct = decompose(
            part["ACTUAL"].to_numpy(),
            part["FORECAST"].to_numpy(),
            scoring_function=PinballLoss(level=row.QUANTILE),
        ).row(0, named=True)
        got = metrics[row.MODEL][f"h{row.HORIZON}"][f"q{row.QUANTILE:g}"]
        assert got["n"] == row.N == len(part)
        for key in ("score", "miscalibration", "discrimination", "uncertainty"):
            assert getattr(row, key.upper()) == pytest.approx(direct[key], rel=1e-12, abs=1e-14)
            assert got[key] == pytest.approx(direct[key], rel=1e-5, abs=1e-12)  # 6 digits
    page = (root / "reports/index.html").read_text()
    assert 'id="decomposition"' in page and "miscalibration" in page


def test_results_page_summarises_the_decomposition_per_model(run, tmp_path):
    from pipeline.evaluation.results_calibration import calibration_section

    root = run[0]
    tables = {p.stem: pd.read_parquet(p) for p in (root / "reports/tables").glob("*.parquet")}
    text = calibration_section(tables, root, tmp_path / "RESULTS.md")
    block = text.split("**Pinball loss decomposition**")[1]
    table = tables["pinball_decomposition"]
    pinball = tables["pinball"].query("PERIOD == 'all'")
    for model in MODELS:
        row = re.search(
            rf"^\| {model} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", block, re.M
        )
        assert row, model
        score, mcb, dsc, unc = (float(v) for v in row.groups())
        part = pinball[pinball["MODEL"] == model]
        assert score == pytest.approx(
            (part["PINBALL"] * part["N"]).sum() / part["N"].sum(), abs=5e-5
        )
        assert score == pytest.approx(mcb - dsc + unc, abs=2e-4)  # four decimals each
        cells = table[table["MODEL"] == model]
        mean_mcb = (cells["MISCALIBRATION"] * cells["N"]).sum() / cells["N"].sum()
        assert mcb == pytest.approx(mean_mcb, abs=5e-5)
