"""Recalibration and combination against direct transcriptions of DESIGN.md's formulas
("Benchmarks, combination and recalibration"), written as plain loops over months: the
panel-pooled conformal and tracker (test_calibration.py checks the per-country ones), gaps in
the actuals, bias removal by conformal, and the properties that matter: rearrangement never
raises a forecast's pinball loss (Chernozhukov, Fernandez-Val and Galichon 2010) and every
combined or calibrated fan is non-crossing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from forecast_frames import forecast_block
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pipeline.evaluation.calibration import CalibrationSettings, calibrate
from pipeline.evaluation.combination import combine, rearrange
from pipeline.evaluation.derived import DerivedSettings, derive

LEVELS = (0.1, 0.5, 0.9)
KEY = ["MODEL", "COUNTRY", "HORIZON", "WINDOW_END", "QUANTILE"]


def panel(
    n_origins: int,
    *,
    horizon: int,
    bias: float,
    seed: int,
    late_start: int = 0,
    missing: float = 0.0,
    model: str = "m",
) -> pd.DataFrame:
    """Forecasts of y ~ N(0, 1): the true quantiles + bias + noise, for three countries;
    country CC starts `late_start` months later; a share `missing` of actuals unknown."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, country in enumerate(("AA", "BB", "CC")):
        skip = late_start if i == 2 else 0
        ends = pd.date_range("2001-01-01", periods=n_origins, freq="MS")[skip:]
        y = rng.normal(size=ends.size)
        y[rng.uniform(size=ends.size) < missing] = np.nan
        for q in LEVELS:
            parts.append(
                forecast_block(
                    ends,
                    country=country,
                    model=model,
                    level=q,
                    horizon=horizon,
                    forecast=stats.norm.ppf(q) + bias + rng.normal(0, 0.3, ends.size),
                    actual=y,
                    ALPHA=np.nan,
                )
            )
    return pd.concat(parts, ignore_index=True)


def _month(ts: pd.Timestamp) -> int:
    return ts.year * 12 + ts.month - 1


def _by_cell(frame: pd.DataFrame) -> dict[tuple, tuple[float, float]]:
    """(country, month, level) -> (q, y)."""
    return {
        (r.COUNTRY, _month(r.WINDOW_END), r.QUANTILE): (r.FORECAST, r.ACTUAL)
        for r in frame.itertuples(index=False)
    }


def _sorted_fans(frame: pd.DataFrame, values: dict[tuple, float]) -> pd.Series:
    """The oracle's calibrated values, rearranged (sorted across levels per forecast)."""
    out = {}
    for (country, month), fan in pd.Series(values).groupby(level=[0, 1]):
        for level, value in zip(LEVELS, np.sort(fan.to_numpy()), strict=True):
            out[(country, month, level)] = value
    return pd.Series(out).sort_index()


def _got(out: pd.DataFrame) -> pd.Series:
    return pd.Series(
        {
            (r.COUNTRY, _month(r.WINDOW_END), r.QUANTILE): r.FORECAST
            for r in out.itertuples(index=False)
        }
    ).sort_index()


def conformal_panel_oracle(frame: pd.DataFrame, h: int, window: int, min_history: int) -> pd.Series:
    """q_T + Q_tau({y_{S+h} - q_S}: every country, the last `window` origin months S with
    S + h <= T that have a realized error), numpy's linear quantile; q_T unchanged with
    fewer than min_history errors."""
    cells = _by_cell(frame)
    values = {}
    for (country, t, level), (q, _) in cells.items():
        errors_by_month: dict[int, list[float]] = {}
        for (_, s, lv), (qs, ys) in cells.items():
            if lv == level and s + h <= t and np.isfinite(ys):
                errors_by_month.setdefault(s, []).append(ys - qs)
        months = sorted(errors_by_month)[-window:]
        errors = [e for s in months for e in errors_by_month[s]]
        shift = np.quantile(errors, level) if len(errors) >= max(min_history, 1) else 0.0
        values[(country, t, level)] = q + shift
    return _sorted_fans(frame, values)


def tracker_panel_oracle(
    frame: pd.DataFrame, h: int, step: float, min_history: int, scale: dict[tuple, float]
) -> pd.Series:
    """One theta for all countries: at each origin month T it has absorbed, in month order,
    step * mean_c s_c,S (tau - 1{y_c,S+h <= q_c,S + theta_S}) for every S with S + h <= T
    that has an actual; q_T + theta_T once min_history updates are absorbed."""
    cells = _by_cell(frame)
    months = sorted({t for _, t, _ in cells})
    values = {}
    for level in LEVELS:
        theta_at: dict[int, float] = {}
        for t in months:
            theta, absorbed = 0.0, 0
            for s in months:
                if s + h > t:
                    break
                terms = [
                    scale[(c, s)] * (level - float(ys <= qs + theta_at[s]))
                    for (c, ms, lv), (qs, ys) in cells.items()
                    if ms == s and lv == level and np.isfinite(ys)
                ]
                if terms:
                    theta += step * float(np.mean(terms))
                    absorbed += 1
            theta_at[t] = theta
            for (country, ms, lv), (q, _) in cells.items():
                if ms == t and lv == level:
                    values[(country, t, level)] = q + (theta if absorbed >= min_history else 0.0)
    return _sorted_fans(frame, values)


@pytest.mark.parametrize("h", [1, 3])
def test_panel_conformal_equals_its_formula(h):
    frame = panel(26, horizon=h, bias=0.8, seed=h, late_start=5, missing=0.15)
    s = CalibrationSettings("conformal", window=6, min_history=4, pool="panel")
    got = _got(calibrate(frame, s))
    want = conformal_panel_oracle(frame, h, window=6, min_history=4)
    pd.testing.assert_series_equal(got, want, rtol=1e-12)


@pytest.mark.parametrize("h", [1, 3])
def test_panel_tracker_equals_its_formula(h):
    frame = panel(26, horizon=h, bias=-0.6, seed=10 + h, late_start=4, missing=0.15)
    rng = np.random.default_rng(h)
    scale = frame[["COUNTRY", "WINDOW_END"]].drop_duplicates().reset_index(drop=True)
    scale["SCALE"] = rng.uniform(0.5, 2.0, len(scale))
    s = CalibrationSettings("tracker", step=0.2, min_history=3, pool="panel")
    got = _got(calibrate(frame, s, scale))
    by_month = {(r.COUNTRY, _month(r.WINDOW_END)): r.SCALE for r in scale.itertuples()}
    want = tracker_panel_oracle(frame, h, step=0.2, min_history=3, scale=by_month)
    pd.testing.assert_series_equal(got, want, rtol=1e-12)


@pytest.mark.parametrize("pool", ["country", "panel"])
def test_conformal_brings_a_biased_models_coverage_to_its_finite_sample_level(pool):
    """On a model whose every quantile is 1 sd too low (errors i.i.d.), the conformal
    variant's hit rate is what order statistics give for numpy's linear quantile of n
    exchangeable errors: E F(Q_tau) = (1 + (n - 1) tau) / (n + 1) (between the order
    statistics at (n - 1) tau + 1 and the next, E F(X_(k)) = k / (n + 1)): with n = 36
    errors per country, 0.122 and 0.878 at the tails, not 0.1 and 0.9 (DESIGN's spec;
    numpy's method="weibull" would be nominal: docs/ORACLES.md); and its pinball loss falls."""
    frame = panel(400, horizon=2, bias=-1.0, seed=3)
    out = calibrate(frame, CalibrationSettings("conformal", window=36, pool=pool))
    n = 36 * (3 if pool == "panel" else 1)  # the window's errors: months x countries
    scored_from = pd.Timestamp("2001-01-01") + pd.DateOffset(months=60)
    raw = frame[frame["WINDOW_END"] >= scored_from]
    cal = out[out["WINDOW_END"] >= scored_from]
    for q in LEVELS:
        r, c = raw[raw["QUANTILE"] == q], cal[cal["QUANTILE"] == q]
        se = np.sqrt(q * (1 - q) / len(c))
        assert abs((r["ACTUAL"] <= r["FORECAST"]).mean() - q) > 5 * se  # miscalibrated
        expected = (1 + (n - 1) * q) / (n + 1)
        assert abs((c["ACTUAL"] <= c["FORECAST"]).mean() - expected) < 2.5 * se

    def loss(f):
        u = f["ACTUAL"] - f["FORECAST"]
        return float(np.mean(np.maximum(f["QUANTILE"] * u, (f["QUANTILE"] - 1) * u)))

    assert loss(cal) < 0.9 * loss(raw)


def _pinball_sum(y: float, fan: np.ndarray, levels: np.ndarray) -> float:
    u = y - fan
    return float(np.sum(np.maximum(levels * u, (levels - 1) * u)))


@settings(max_examples=60, deadline=None)
@given(
    fan=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=7),
    y=st.floats(-6, 6, allow_nan=False),
)
def test_rearrangement_never_raises_the_pinball_loss(fan, y):
    """Sorting a fan's values across sorted levels never raises its summed pinball loss
    (Chernozhukov, Fernandez-Val and Galichon 2010, Prop. 4), whatever the outcome."""
    levels = (np.arange(len(fan)) + 1.0) / (len(fan) + 1.0)
    ends = pd.Timestamp("2020-01-01")
    frame = pd.DataFrame(
        {"MODEL": "m", "COUNTRY": "AA", "HORIZON": 1, "WINDOW_END": ends,
         "QUANTILE": levels[::-1], "FORECAST": fan[::-1]}
    )  # fmt: skip
    out = rearrange(frame)
    assert out["QUANTILE"].tolist() == levels.tolist()
    assert sorted(out["FORECAST"].tolist()) == out["FORECAST"].tolist() == sorted(fan)
    before = _pinball_sum(y, np.array(fan), levels)
    assert _pinball_sum(y, out["FORECAST"].to_numpy(), levels) <= before + 1e-9


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["mean", "median"]),
    cal=st.sampled_from(["conformal", "tracker"]),
    pool=st.sampled_from(["country", "panel"]),
)
def test_combined_and_calibrated_fans_never_cross(seed, method, cal, pool):
    """Members with crossing fans and gaps: the combination and every calibrated variant
    are non-decreasing across levels in every forecast."""
    rng = np.random.default_rng(seed)
    members = []
    for i, model in enumerate(("a", "b", "c")):
        part = panel(14, horizon=1, bias=float(rng.normal()), seed=seed + i, model=model)
        part["FORECAST"] += rng.normal(0, 2.0, len(part))  # crossings inside the members
        part.loc[rng.uniform(size=len(part)) < 0.1, "FORECAST"] = np.nan
        members.append(part)
    frame = pd.concat(members, ignore_index=True)
    combo = combine(frame, ["a", "b", "c"], method=method)
    settings_ = CalibrationSettings(cal, window=5, min_history=2, pool=pool, step=0.5)
    calibrated = calibrate(pd.concat([frame, combo], ignore_index=True), settings_)
    for out in (combo, calibrated):
        assert not out.empty
        steps = out.sort_values(KEY).groupby(KEY[:-1], observed=True)["FORECAST"].diff()
        assert (steps.dropna() >= 0).all()


def test_derive_feeds_the_calibrators_with_the_warm_up_and_never_looks_ahead():
    """derive: combo from the raw members, every model (combo included) recalibrated over
    every origin, then the warm-up dropped. The scored _cal rows are those of calibrating the
    whole table (the warm-up fed them, so they differ from calibrating the scored rows
    alone), and changing any outcome after month T leaves every scored row of origin <= T."""
    frame = pd.concat(
        [panel(30, horizon=2, bias=b, seed=i, model=m) for i, (m, b) in
         enumerate((("a", 0.5), ("b", -0.3)))],
        ignore_index=True,
    )  # fmt: skip
    cal = CalibrationSettings("conformal", window=8, min_history=3)
    score_from = pd.Timestamp("2001-01-01") + pd.DateOffset(months=12)
    settings_ = DerivedSettings(combo_members=("a", "b"), calibration=cal, score_from=score_from)
    out = derive(frame, settings_)
    assert out["WINDOW_END"].min() == score_from
    assert set(out["MODEL"]) == {"a", "b", "combo", "a_cal", "b_cal", "combo_cal"}
    combo = combine(frame, ["a", "b"])
    whole = calibrate(pd.concat([frame, combo], ignore_index=True), cal)
    whole = whole[whole["WINDOW_END"] >= score_from]
    got = out[out["MODEL"].str.endswith("_cal")]
    pd.testing.assert_series_equal(
        got.set_index(KEY)["FORECAST"].sort_index(), whole.set_index(KEY)["FORECAST"].sort_index()
    )
    alone = derive(frame[frame["WINDOW_END"] >= score_from], settings_)
    assert not np.allclose(
        alone[alone["MODEL"] == "a_cal"].set_index(KEY)["FORECAST"].sort_index(),
        got[got["MODEL"] == "a_cal"].set_index(KEY)["FORECAST"].sort_index(),
    )
    t = score_from + pd.DateOffset(months=6)
    changed = frame.copy()
    later = changed["TIME"] > t
    changed.loc[later, "ACTUAL"] += 5.0
    again = derive(changed, settings_)
    keep = out["WINDOW_END"] <= t
    columns = [*KEY, "FORECAST"]
    pd.testing.assert_frame_equal(
        out.loc[keep, columns].reset_index(drop=True),
        again.loc[again["WINDOW_END"] <= t, columns].reset_index(drop=True),
    )
