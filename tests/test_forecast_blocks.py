"""train's forecast table built in blocks of countries equals the whole build, bit for bit.

The blocks exist to bound train's driver memory (pipeline/runtime/fits/forecast_rows.py): only
one block's flat columns live at a time. Whatever the block size, the Arrow chunks (their row
counts and contents) and so the parquet file's bytes must be those of one block over the whole
table, including blocks without a known fit (a country whose fits all failed) and a country
split across no block.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import SMALL_STUDY, make_config
from test_tasks import time_panel

from pipeline.io import write_parquet_tables
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.forecast_rows import TABLE_OPTIONS, forecast_chunks
from pipeline.schema import forecast_arrow_schema

WHOLE = 1 << 40  # one block: the whole table at once, as the build was before blocks


def random_study(model: str, seed: int):  # type: ignore[no-untyped-def]
    """Groups of `model` over 3-6 countries with random spans, random forecasts (some NaN),
    random known fits, and one country whose every fit is unknown (failed)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    codes = rng.choice([f"{a}{b}" for a in "ABCDEFGH" for b in "XYZ"], n, replace=False)
    spans = {}
    for code in codes:
        start = 2013 + int(rng.integers(0, 3))
        spans[str(code)] = (f"{start}-{int(rng.integers(1, 13)):02d}-01", "2019-12-01")
    panel = time_panel(spans)
    d = copy.deepcopy(SMALL_STUDY)
    d["models"].setdefault(model, {})["enabled"] = True
    config = make_config(d)
    groups = build_groups(panel, config, adapter_for(config, model))
    Q = len(config.data.quantiles)
    pred = [rng.normal(size=(len(g), g.rows.shape[1], len(g.horizons), Q)) for g in groups]
    alpha = [rng.normal(size=(len(g), Q)) for g in groups]
    for p in pred:
        p[rng.random(p.shape) < 0.05] = np.nan
    have = [rng.random(len(g)) < 0.7 for g in groups]
    failed = str(codes[int(rng.integers(0, n))])
    for gi, g in enumerate(groups):
        if g.rows.shape[1] == 1:  # a per-country fit: its country fails entirely
            have[gi] &= g.countries[:, 0].astype(str) != failed
    # actuals from the panel, one country's last year missing
    last = str(codes[0])
    panel = panel[~((panel["COUNTRY"] == last) & (panel["TIME"] >= "2019-01-01"))]
    return (groups, pred, alpha, have, config, model, panel), failed


@pytest.mark.parametrize("model", ["ar_qr", "ensemble_nn"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocks_of_countries_give_the_whole_table_bit_for_bit(
    tmp_path: Path, model: str, seed: int
) -> None:
    args, failed = random_study(model, seed)
    for chunk in (5, 37, 1 << 16):
        whole = list(forecast_chunks(*args, chunk=chunk, block_rows=WHOLE))
        table = pa.concat_tables(whole)
        assert table.num_rows > 100
        if model == "ar_qr":
            assert failed not in set(table.column("COUNTRY").to_pylist())
        for block_rows in (1, 7, 100, 1000):
            got = list(forecast_chunks(*args, chunk=chunk, block_rows=block_rows))
            assert [t.num_rows for t in got] == [t.num_rows for t in whole]
            assert all(a.equals(b) for a, b in zip(got, whole, strict=True))
    # the file train writes: the same bytes
    for name, block_rows in (("whole", WHOLE), ("blocks", 7)):
        write_parquet_tables(
            tmp_path / f"{name}.parquet",
            forecast_arrow_schema(),
            forecast_chunks(*args, chunk=37, block_rows=block_rows),
            options=TABLE_OPTIONS,
        )
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "blocks.parquet").read_bytes()


def test_no_known_fit_gives_one_empty_table_in_blocks() -> None:
    (groups, pred, alpha, have, config, model, panel), _ = random_study("ar_qr", 3)
    nothing = [h & False for h in have]
    for block_rows in (1, WHOLE):
        (empty,) = forecast_chunks(
            groups, pred, alpha, nothing, config, model, panel, block_rows=block_rows
        )
        assert empty.num_rows == 0 and empty.schema == forecast_arrow_schema()


def test_the_blocks_bound_the_tables_build_memory() -> None:
    """The driver's memory for the table is one block's (and one chunk's), not the table's:
    on a fixed study of 300 countries, the numpy memory traced while the whole table streams
    out in blocks of ~5,000 rows is under a third of the one-block build's (0.23 when written:
    the panel's grid, 2.1 MB, is most of it)."""
    import tracemalloc

    spans = {f"C{i:03d}": ("2013-01-01", "2019-12-01") for i in range(300)}
    panel = time_panel(spans)
    d = copy.deepcopy(SMALL_STUDY)
    d["models"].setdefault("ar_qr", {})["enabled"] = True
    d["data"]["quantiles"] = [round(0.05 * k, 2) for k in range(1, 20)]  # rows, not grid
    config = make_config(d)
    groups = build_groups(panel, config, adapter_for(config, "ar_qr"))
    Q = len(config.data.quantiles)
    pred = [np.ones((len(g), g.rows.shape[1], len(g.horizons), Q)) for g in groups]
    alpha = [np.ones((len(g), Q)) for g in groups]
    have = [np.ones(len(g), dtype=bool) for g in groups]
    args = (groups, pred, alpha, have, config, "ar_qr", panel)

    def peak(block_rows: int) -> tuple[int, int]:
        tracemalloc.start()
        try:
            rows = sum(t.num_rows for t in forecast_chunks(*args, chunk=500, block_rows=block_rows))
            return rows, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    (rows, whole), (same, blocks) = peak(WHOLE), peak(5000)
    assert rows == same > 100_000
    assert blocks < whole / 3, (blocks, whole)
