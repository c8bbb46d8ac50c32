"""The metric tables' steps in an order that holds less (issue 18 item 6, second pass): the
crossing table is made once the scored rows are gone, and the benchmark's join is dropped
before the scored rows' tables; every table is the one the old order made, bit for bit."""

from __future__ import annotations

import gc
from typing import Any

import pandas as pd
import pytest
from test_driver_memory import _frame

from pipeline.evaluation import metrics
from pipeline.evaluation.crossing import crossing_rows
from pipeline.evaluation.dm import dm_rows
from pipeline.evaluation.grouping import Keys
from pipeline.evaluation.interval import interval_rows


def _old_metric_tables(frame: pd.DataFrame, benchmark: str) -> dict[str, pd.DataFrame]:
    """metric_tables in its old order (every table per period beside the scored and joined
    rows), kept here as the reference."""
    m = metrics
    mchq = [m.MODEL, m.COUNTRY, m.HORIZON, m.QUANTILE]
    dtypes = {c: frame[c].dtype for c in mchq}
    work = m.compact_frame(frame)
    by, mh = list(m.BY_DEFAULT), [m.MODEL, m.HORIZON]
    makers = {
        "pinball": lambda f, s, j, k, jk: m._pinball_rows(s, by, k),
        "pinball_by_country": lambda f, s, j, k, jk: m._pinball_rows(s, mchq, k),
        "relative_pinball": lambda f, s, j, k, jk: m._relative_rows(j, by, jk),
        "coverage": lambda f, s, j, k, jk: m._coverage_rows(s, by, k),
        "interval": lambda f, s, j, k, jk: interval_rows(s, mh, list(m.FORECAST_KEY), k),
        "crps": lambda f, s, j, k, jk: m._crps_rows(s, mh, k),
        "crossing": lambda f, s, j, k, jk: crossing_rows(f[0], mh, f[1], f[2]),
        "dm": lambda f, s, j, k, jk: dm_rows(j, benchmark, mh, True, dtypes),
        "dm_by_quantile": lambda f, s, j, k, jk: dm_rows(j, benchmark, by, True, dtypes),
    }
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in makers}
    work_keys = Keys(work)
    covid = m.covid_mask(work)
    for period in ("all", "ex_covid"):
        where = None if period == "all" else ~covid
        mask = m._scored_mask(work).to_numpy()
        if where is not None:
            mask = mask & where
        scored = m._scored(work, mask)
        keys = work_keys.subset(scored, mask)
        joined, joined_keys = m._with_benchmark(scored, benchmark, keys)
        for name, make in makers.items():
            table = make((work, work_keys, where), scored, joined, keys, joined_keys)
            parts[name].append(table.assign(PERIOD=period))
    tables = {}
    for name, pieces in parts.items():
        table = pd.concat(pieces, ignore_index=True)
        for c in mchq:
            coded = c in table.columns and isinstance(table[c].dtype, pd.CategoricalDtype)
            if coded and not isinstance(dtypes[c], pd.CategoricalDtype):
                table[c] = table[c].astype(dtypes[c])
        tables[name] = table[["PERIOD", *table.columns[:-1]]]
    return tables


@pytest.mark.parametrize("benchmark", ["ar_qr", "absent_model"])
def test_metric_tables_equal_the_old_orders_bit_for_bit(benchmark: str) -> None:
    frame = _frame()
    new, old = metrics.metric_tables(frame, benchmark), _old_metric_tables(frame, benchmark)
    assert list(new) == list(old)
    for name in old:
        pd.testing.assert_frame_equal(new[name], old[name], check_exact=True, obj=name)


def _live_frames_with(column: str) -> int:
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if issubclass(type(o), pd.DataFrame) and column in o.columns
    )


def test_the_scored_and_joined_rows_are_gone_before_the_larger_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The crossing table sorts every row's forecast: no scored row copy (LOSS) may live beside
    it; the interval table pairs every forecast's rows: no joined copy (BENCH_LOSS) beside it."""
    frame = _frame()
    seen: dict[str, list[int]] = {"crossing": [], "interval": []}

    def crossing(*args: Any, **kwargs: Any) -> pd.DataFrame:
        seen["crossing"].append(_live_frames_with("LOSS"))
        return crossing_rows(*args, **kwargs)

    def interval(*args: Any, **kwargs: Any) -> pd.DataFrame:
        seen["interval"].append(_live_frames_with("BENCH_LOSS"))
        return interval_rows(*args, **kwargs)

    monkeypatch.setattr(metrics, "_crossing_rows", crossing)
    monkeypatch.setattr(metrics, "interval_rows", interval)
    metrics.metric_tables(frame, "ar_qr")
    assert seen == {"crossing": [0, 0], "interval": [0, 0]}
