"""Rolling windows: counts match the definition and no training target lies after its origin."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import RollingWindowConfig
from pipeline.config.compose import compose_config
from pipeline.data.windows import (
    add_months,
    origins,
    scored_origins,
    training_range,
    warmup_origins,
)
from pipeline.schema import month_index, month_start

months = st.integers(min_value=2000 * 12, max_value=2030 * 12).map(month_start)


@settings(max_examples=100, deadline=None)
@given(index=st.lists(st.integers(1700 * 12, 2200 * 12), max_size=20), day=st.integers(1, 28))
def test_month_index_one_arithmetic_for_scalars_and_columns(index, day):
    """schema.month_index / month_start (the one month arithmetic): a column gives what each
    of its months gives alone, any day of a month maps to that month, and they invert."""
    stamps = [month_start(m) for m in index]
    assert all(s.day == 1 and month_index(s) == m for s, m in zip(stamps, index, strict=True))
    column = pd.Series([s.replace(day=day) for s in stamps], dtype="datetime64[ns]")
    assert month_index(column).tolist() == index
    assert month_start(np.asarray(index, dtype=np.int64)).equals(
        pd.DatetimeIndex(stamps, dtype="datetime64[ns]")
    )
    assert month_index("1969-12-15") == 1969 * 12 + 11


@settings(max_examples=200, deadline=None)
@given(start=months, span=st.integers(0, 120), step=st.integers(1, 12))
def test_origin_count_and_spacing(start, span, step):
    end = add_months(start, span)
    config = RollingWindowConfig(
        size=24,
        step=step,
        start_date=str(start.date()),
        end_date=str(end.date()),
        calibration_start=None,
    )
    result = origins(config)
    assert len(result) == span // step + 1
    assert result[0] == start and result[-1] <= end
    assert all(month_index(b) - month_index(a) == step for a, b in itertools.pairwise(result))


@settings(max_examples=300, deadline=None)
@given(origin=months, size=st.integers(2, 120), horizon=st.integers(1, 24))
def test_training_range_never_looks_past_the_origin(origin, size, horizon):
    if horizon >= size:
        return
    r = training_range(origin, size, horizon)
    assert r.window_start == add_months(origin, -(size - 1))
    assert r.first_t == r.window_start
    # the last training pair's target is y_{last_t + h}, which must be known at the origin
    assert add_months(r.last_t, horizon) == origin
    assert r.n_pairs == size - horizon
    assert r.forecast_time == add_months(origin, horizon) > origin


def test_seed_grid_has_72_origins():
    config = compose_config(["experiment=seed"]).rolling_window
    result = origins(config)
    assert len(result) == 72
    assert (result[0], result[-1]) == (pd.Timestamp("2018-01-01"), pd.Timestamp("2023-12-01"))
    r = training_range(result[0], 60, 12)
    assert (r.window_start, r.last_t, r.n_pairs) == (
        pd.Timestamp("2013-02-01"),
        pd.Timestamp("2017-01-01"),
        48,
    )


@settings(max_examples=100, deadline=None)
@given(start=months, warm=st.integers(0, 40), span=st.integers(0, 30), step=st.integers(1, 6))
def test_warmup_origins_precede_the_scored_ones_on_their_grid(start, warm, span, step):
    config = RollingWindowConfig(
        size=24,
        step=step,
        start_date=str(start.date()),
        end_date=str(add_months(start, span).date()),
        calibration_start=str(add_months(start, -warm).date()),
    )
    warmup, scored = warmup_origins(config), scored_origins(config)
    assert len(warmup) == warm // step and scored[0] == start
    assert origins(config) == [*warmup, *scored]
    assert all(
        month_index(b) - month_index(a) == step for a, b in itertools.pairwise(origins(config))
    )
