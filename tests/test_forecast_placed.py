"""train's forecast table with each row written at its sorted place equals the sorted build.

pipeline/runtime/fits/forecast_rows.py places each forecast row straight at its place in
FORECAST_SORT's order when the groups allow it (each horizon in one group, each group's fits
of a country in increasing origin order: what the plan builds), instead of a stable argsort
of every row's key and a gather per column. The two must give the same Arrow chunks and the
same parquet bytes, whatever the quantiles' order, the blocks and the unknown fits.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_forecast_blocks import random_study

import pipeline.runtime.fits.forecast_rows as forecast_rows
from pipeline.io import write_parquet_tables
from pipeline.runtime.fits.forecast_rows import TABLE_OPTIONS, forecast_chunks
from pipeline.schema import forecast_arrow_schema


def _tables(args: tuple, monkeypatch: pytest.MonkeyPatch, placed: bool, **kw) -> list[pa.Table]:  # type: ignore[type-arg]
    with monkeypatch.context() as m:
        if not placed:
            m.setattr(forecast_rows, "_slots", lambda *a: None)
        return list(forecast_chunks(*args, **kw))


@pytest.mark.parametrize("model", ["ar_qr", "rw", "ensemble_nn"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_placed_rows_give_the_sorted_table_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, seed: int
) -> None:
    args, _ = random_study(model, seed)
    groups, config = args[0], args[4]
    if model != "ensemble_nn":  # per-country groups: the plan's fits are in origin order
        have = args[3]
        rows = forecast_rows._RowsByCountry(groups, have, len(config.data.quantiles))
        assert rows.slots is not None
    # quantiles out of order: QUANTILE sorts by value, not by the forecasts' axis
    shuffled = copy.deepcopy(config)
    object.__setattr__(shuffled.data, "quantiles", list(config.data.quantiles)[::-1])
    for cfg in (config, shuffled):
        study = (*args[:4], cfg, *args[5:])
        for chunk, block_rows in ((37, 7), (1 << 16, 1 << 40), (5, 100)):
            kw = {"chunk": chunk, "block_rows": block_rows}
            want = _tables(study, monkeypatch, False, **kw)
            got = _tables(study, monkeypatch, True, **kw)
            assert sum(t.num_rows for t in want) > 100
            assert [t.num_rows for t in got] == [t.num_rows for t in want]
            assert all(a.equals(b) for a, b in zip(got, want, strict=True))
    for name, placed in (("sorted", False), ("placed", True)):
        tables = _tables(args, monkeypatch, placed, chunk=37, block_rows=7)
        write_parquet_tables(
            tmp_path / f"{name}.parquet",
            forecast_arrow_schema(),
            iter(tables),
            options=TABLE_OPTIONS,
        )
    assert (tmp_path / "sorted.parquet").read_bytes() == (tmp_path / "placed.parquet").read_bytes()


def test_fits_out_of_origin_order_are_sorted_instead() -> None:
    """A group whose fits of a country are not in increasing origin order (not what the plan
    builds) has no place per row: the rows are sorted, as before."""
    (groups, _, _, have, config, _, _), _ = random_study("rw", 0)
    Q = len(config.data.quantiles)
    assert forecast_rows._RowsByCountry(groups, have, Q).slots is not None
    g = groups[0]
    flipped = copy.copy(g)
    object.__setattr__(flipped, "origin", np.asarray(g.origin)[::-1].copy())
    assert forecast_rows._RowsByCountry([flipped, *groups[1:]], have, Q).slots is None
    # the same horizon in two groups: no single run per horizon
    assert forecast_rows._RowsByCountry([g, g], [have[0], have[0]], Q).slots is None
