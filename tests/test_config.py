"""Config validation: every bad input fails once, with the key, what is allowed and what was given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, StudyConfig, validate
from pipeline.config.compose import compose_config, compose_dict
from pipeline.models.plugins import registry

ROOT = Path(__file__).resolve().parents[1]


def test_seed_preset_has_every_seed_key_with_its_default():
    config = compose_config(["experiment=seed"])
    assert config.name == "seed"
    runtime = config.runtime
    assert (runtime.allow_reload, runtime.retrain_if_exists, runtime.max_cores) == (
        True,
        False,
        "auto",
    )
    assert (runtime.safety_ram_fraction, runtime.max_ram_gb, runtime.retries) == (0.8, "auto", 1)
    assert runtime.max_workers is None and runtime.mem_probe_fudge_mb >= 0
    data = config.data
    assert (data.source, data.target) == ("eurostat", "prc_hicp_manr_CP00")
    assert data.lags == (1, 2, 3, 6, 12) and data.horizons == (1, 3, 6, 12)
    assert data.quantiles == (0.1, 0.5, 0.9)
    assert (data.missing, data.scale) == ("forward_fill_then_mean", "per_country")
    window = config.rolling_window
    assert (window.size, window.step, window.start_date, window.end_date) == (
        60,
        1,
        "2018-01-01",
        "2023-12-01",
    )
    models = config.models
    assert models.ar_qr.p == 12
    assert models.lqr.alphas == (7.5, 10, 15, 20, 25, 30, 35)
    assert (models.lqr.solver, models.lqr.rff_features) == ("huberized", 1000)
    nn = models.ensemble_nn
    assert nn.units_per_layer == (32,) * 5 and nn.learning_rate == 5e-5
    assert (nn.epochs, nn.batch_size, nn.patience, nn.parallel_models) == (1500, 32, 50, 10)
    assert models.enabled() == registry.builtin_names()  # every built-in model, by default


def test_default_is_quick_and_roundtrips_through_validate():
    plain = compose_dict([])
    config = validate(plain)
    assert config.name == "quick" and config.data.source == "synthetic"
    assert validate(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("data.quantiles=[0.1,1.0]", "data.quantiles[1]", "(0, 1)"),
        ("data.quantiles=[0.5,0.1]", "data.quantiles", "increasing"),
        ("data.horizons=[0,3]", "data.horizons[0]", ">= 1"),
        ("rolling_window.end_date=2010-01-01", "rolling_window.end_date", "on or after"),
        ("models.lqr.solver=simplex", "models.lqr.solver", "huberized"),
        ("models.lqr.alphas=[-1]", "models.lqr.alphas[0]", ">= 0"),
        ("models.lqr.alphas=[]", "models.lqr.alphas", "non-empty"),
        ("models.ar_qr.p=0", "models.ar_qr.p", "p >= 1"),
        ("models.ensemble_nn.learning_rate=0", "models.ensemble_nn.learning_rate", "> 0"),
        ("rolling_window.size=3", "rolling_window.size", "longest horizon"),
        ("+data.colour=red", "data.colour", "known keys"),
        ("+models.xgboost.enabled=true", "models.xgboost", "_target_"),
        ("runtime.max_cores=many", "runtime.max_cores", "'auto'"),
        ("data.lags=one", "data.lags", "list"),
        ("data.features=[core,core]", "data.features", "distinct columns"),
        ("data.features=[inflation]", "data.features", "other than the target"),
        ("evaluation.fan_countries=[C01,XX]", "evaluation.fan_countries", "'C06'"),
        ("evaluation.fan_countries=[C01,C01]", "evaluation.fan_countries", "distinct"),
        ("evaluation.fan_countries=[]", "evaluation.fan_countries", "distinct"),
    ],
)
def test_bad_values_name_key_allowed_and_given(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        compose_config([override])
    assert info.value.key == key
    assert fragment in str(info.value)


def test_fan_countries_default_is_stated_and_a_country_the_data_lacks_is_a_config_error():
    from pipeline.stages.study import chart_order, fan_countries

    config = compose_config([])  # synthetic: C01..C06, none of the default four
    fans, why = fan_countries(config, ["C01", "C02", "C03", "C04", "C05", "C06"])
    assert fans == ["C01", "C02", "C03", "C04"] and "none of the euro area" in why
    assert fan_countries(config, ["AT", "DE", "ES", "PL"]) == (["DE", "ES"], fan_countries(config, ["DE"])[1])  # fmt: skip
    chosen = compose_config(["evaluation.fan_countries=[C05,C02]"])
    assert fan_countries(chosen, ["C01", "C02", "C05"]) == (["C05", "C02"], "set by evaluation.fan_countries")  # fmt: skip
    with pytest.raises(ConfigError, match=r"evaluation\.fan_countries.*\['C05'\]"):
        fan_countries(chosen, ["C01", "C02"])  # the prepared data lost C05 (e.g. no full window)
    with pytest.raises(ConfigError, match="C07"):  # data.countries limits what can be drawn
        compose_config(["data.countries=[C01,C02]", "evaluation.fan_countries=[C07]"])
    # a model switched off keeps its place in the colour order: no other model is recoloured
    assert chart_order(compose_config(["models.lqr.enabled=false"])) == chart_order(config)


def test_override_of_unknown_key_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.colour"):
        compose_config(["data.colour=red"])


def test_cli_bad_config_exits_2_without_traceback_and_writes_nothing(tmp_path):
    params = tmp_path / "params.yaml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "compose",
            "--output",
            str(params),
            "data.quantiles=[0.1,1.5]",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "data.quantiles[1]" in result.stderr and "1.5" in result.stderr
    assert not params.exists()


def test_window_larger_than_history_exits_2_and_writes_nothing(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "rolling_window.size=400",
            f"runtime.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "rolling_window.size" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_committed_params_yaml_matches_composition(tmp_path):
    """params.yaml is generated: edit conf/ and run `python -m pipeline compose`, never by hand."""
    from pipeline.config.compose import write_params

    fresh = tmp_path / "params.yaml"
    write_params(fresh)
    assert (ROOT / "params.yaml").read_text() == fresh.read_text(), (
        "run `python -m pipeline compose`"
    )


def test_write_config_is_complete_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "study.yaml"
    ok = subprocess.run(
        [sys.executable, "-m", "pipeline", "write-config", str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    written = yaml.safe_load(target.read_text())
    assert isinstance(validate(written), StudyConfig)
    assert set(written) == {
        "data",
        "rolling_window",
        "runtime",
        "models",
        "evaluation",
        "calibration",
        "name",
        "seed",
    }  # no derived key (model_names): validate derives it
    before = target.read_text()
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "write-config", str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and target.read_text() == before


def _month_as_pandas_reads_it(value, key):
    """The date check as it was (pd.Timestamp for every value): the reference."""
    import pandas as pd

    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(key, "a date like '2018-01-01'", value) from None
    if stamp != stamp.to_period("M").to_timestamp():
        raise ConfigError(key, "the first day of a month, like '2018-01-01'", value)
    return stamp.year * 12 + stamp.month - 1


@pytest.mark.parametrize(
    "value",
    [
        "2018-01-01", "2018-12-01", "1678-01-01", "2261-12-01", "2262-04-01", "1500-01-01",
        "9999-12-01", "0000-01-01", "2018-01-15", "2018-02-30", "2018-13-01", "2018-00-01",
        "2018-01-00", "2018-01", "2018-1-1", "20180101", "Jan 2018", "2018-01-01T00:00",
        "2018-01-01T12:00", "2018-01-01 ", " 2018-01-01", "2018/01/01", "٢٠١٨-٠١-٠١", "soon", "2018-01-01x",
    ],
)  # fmt: skip
def test_dates_are_read_as_pandas_reads_them_without_importing_it_for_iso_days(value):
    """Config validation reads an ISO day itself (no pandas import on every run's start) and
    hands any other spelling to pandas: the same dates accepted, the same exit-2 messages."""
    from pipeline.config.semantics import _month

    def outcome(check):
        try:
            return check(value, "rolling_window.start_date")
        except ConfigError as error:
            return str(error)

    assert outcome(_month) == outcome(_month_as_pandas_reads_it)


@pytest.mark.parametrize("value", ["", "NaT", "nat"])
def test_an_empty_date_is_a_config_error_not_a_traceback(value):
    with pytest.raises(ConfigError, match=r"rolling_window\.start_date.*a date like"):
        compose_config([f"rolling_window.start_date='{value}'"])
