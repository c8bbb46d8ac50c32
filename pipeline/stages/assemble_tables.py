"""assemble's forecast tables, its test tables (coverage tests, MCS, the decomposition) and the
`dvc plots` data: the parts of stages/assemble.py's work that it hands on or writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation import coverage_tests, decomposition, mcs
from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation.grouping import Keys
from pipeline.io import column_encodings, write_parquet, write_parquet_tables, write_text


def forecast_file_name(model: str, quantile: float, horizon: int) -> str:
    """The seed's table name, e.g. `lqr_q0.1_h12.parquet`."""
    q, h = evaluate.quantile_label(quantile), evaluate.horizon_label(horizon)
    return f"{model}_{q}_{h}.parquet"


def arrow_table(frame: pd.DataFrame, strings: bool = True) -> Any:
    """The frame as an Arrow table, as write_parquet converts it (no index, no metadata), each
    column one chunk: a take of a chunked column is several times slower (the same bytes).
    `strings=False`: a lean frame's categorical columns stay dictionaries (their codes, not a
    string per row: `as_strings` converts a part of the table when it is written)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    return (as_strings(table) if strings else table).combine_chunks()


def as_strings(table: Any) -> Any:
    """The table with its dictionary columns (a lean frame's categoricals, forecast_inputs.
    lean_frame) as the schema's strings."""
    import pyarrow as pa

    for i, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            table = table.set_column(i, table.field(i).name, column.cast(pa.large_string()))
    return table


# Written without a dictionary: nearly every forecast (and actual, over many countries) is a
# value of its own, so pyarrow hashed each into a dictionary as large as the column, or gave
# it up at its 1 MiB page (~131k values): plain, the tables encode in ~55-75% of the CPU and
# are ~10% smaller (benchmarks/README.md, ninth pass). A deliberate change of their bytes.
PLAIN_COLUMNS = ("FORECAST", "ACTUAL")
# pyarrow's ParquetWriter.write_table splits a table into row groups of at most this many rows
ROW_GROUP = 1024 * 1024


def write_forecast_tables(fdir: Path, frame: pd.DataFrame, missing: pd.DataFrame) -> list[Path]:
    """One table per (model, quantile, horizon), then all.parquet and missing.parquet."""
    import pyarrow as pa

    # the frame's Arrow table with its string columns as codes (a whole table of strings was
    # ~50 bytes a row at the step's peak); each part written gets its strings on its own
    coded = arrow_table(frame, strings=False)
    schema = as_strings(coded.slice(0, 0)).schema
    paths, encodings = [], column_encodings(schema.names, plain=PLAIN_COLUMNS)
    # the groups of a sorted groupby (rows in frame order within each), from integer codes
    keys = ["MODEL", "QUANTILE", "HORIZON"]
    codes = [evaluate.rank_codes(frame[c]) for c in keys]
    order = np.lexsort(codes[::-1])
    order = order[frame[keys].notna().all(axis=1).to_numpy()[order]]  # groupby drops NA keys
    group = evaluate.run_ids([c[order] for c in codes])
    edges = np.flatnonzero(np.r_[True, np.diff(group) != 0, True]) if group.size else []
    # each table its rows of the frame's Arrow table (one part at a time in memory): the
    # bytes write_parquet writes for each part
    for a, b in itertools.pairwise(edges):
        part = as_strings(coded.take(pa.array(order[a:b])))
        model, q, h = (part.column(c)[0].as_py() for c in keys)
        paths.append(fdir / forecast_file_name(model, q, h))
        write_parquet_tables(paths[-1], schema, [part], options=encodings)
        del part
    # all.parquet a row group at a time: the writer's own row groups (ROW_GROUP rows each), so
    # the same bytes as the whole table written at once
    blocks = (
        as_strings(coded.slice(a, ROW_GROUP)) for a in range(0, max(coded.num_rows, 1), ROW_GROUP)
    )
    write_parquet_tables(fdir / "all.parquet", schema, blocks, options=encodings)
    write_parquet(fdir / "missing.parquet", missing)
    return [*paths, fdir / "all.parquet", fdir / "missing.parquet"]


def coverage_test_tables(
    frame: pd.DataFrame, size: float, reps: int, seed: int
) -> dict[str, pd.DataFrame]:
    """Coverage tests (pooled, by country) and the MCS of a forecast table (here, or in the
    fork of assemble: the same function on the same rows)."""
    from threadpoolctl import threadpool_limits

    # one BLAS thread: the matrices are small (6 columns), and two spinning BLAS threads on a
    # loaded 2-core machine made the DQ regressions 100x slower (benchmarks/README.md)
    with threadpool_limits(limits=1, user_api="blas"):
        scoring = evaluate.compact_frame(frame)  # MODEL and COUNTRY as codes (if not yet)
        return _test_tables(scoring, size, reps, seed)


def decomposition_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The pinball decomposition of a forecast table (here, or in the fork of assemble)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # see coverage_test_tables
        return decomposition.pinball_decomposition(evaluate.compact_frame(frame))


def test_tables(frame: pd.DataFrame, size: float, reps: int, seed: int) -> dict[str, pd.DataFrame]:
    """`coverage_test_tables` and, as "pinball_decomposition", `decomposition_table`: what
    assemble's fork computes at scale (`test_tables_ipc`), else this process."""
    scoring = evaluate.compact_frame(frame)  # once for both (each makes one if not given)
    tables = coverage_test_tables(scoring, size, reps, seed)
    tables["pinball_decomposition"] = decomposition_table(scoring)
    return tables


def test_tables_ipc(frame: pd.DataFrame, size: float, reps: int, seed: int) -> bytes:
    """`test_tables` as bytes (in assemble's fork: `tables_from_ipc` reads them back)."""
    return tables_to_ipc(test_tables(frame, size, reps, seed))


def tables_to_ipc(tables: dict[str, pd.DataFrame]) -> bytes:
    """Named frames as one Arrow IPC stream each (pandas' metadata kept: index and dtypes
    come back as they were, so the tables written are the same bytes), behind a JSON header of
    names and sizes."""
    import pyarrow as pa

    bodies = []
    for table in tables.values():
        arrow = pa.Table.from_pandas(table, preserve_index=None)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, arrow.schema) as writer:
            writer.write_table(arrow)
        bodies.append(sink.getvalue().to_pybytes())
    header = json.dumps([[name, len(body)] for name, body in zip(tables, bodies, strict=True)])
    return b"".join([len(header).to_bytes(8, "little"), header.encode(), *bodies])


def tables_from_ipc(data: bytes) -> dict[str, pd.DataFrame]:
    """The frames `tables_to_ipc` encoded, in order."""
    import pyarrow as pa

    size = int.from_bytes(data[:8], "little")
    at, tables = 8 + size, {}
    for name, length in json.loads(data[8:at]):
        tables[name] = pa.ipc.open_stream(data[at : at + length]).read_all().to_pandas()
        at += length
    return tables


# what mcs.mcs_table reads of a forecast table
MCS_COLUMNS = ["MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END", "ACTUAL", "FORECAST"]


def _test_tables(frame: pd.DataFrame, size: float, reps: int, seed: int) -> dict[str, pd.DataFrame]:
    """Coverage tests (pooled over countries, and per country) and the MCS per horizon, each
    with a leading PERIOD column like the other metric tables."""
    tests = {
        "coverage_tests": ["MODEL", "HORIZON", "QUANTILE"],
        "coverage_tests_by_country": ["MODEL", "COUNTRY", "HORIZON", "QUANTILE"],
    }
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in [*tests, "mcs"]}
    # the key columns factorized once for both periods and both test tables
    keys = Keys(frame, dropna=False)
    covid = evaluate.covid_mask(frame)
    for period in ("all", "ex_covid"):  # one period's rows in memory at a time
        where = None if period == "all" else ~covid
        # the tests on the frame's rows at `where`: the table of exclude_covid(frame)'s rows,
        # without a copy of the frame (the tests' peak memory at scale)
        for name, by in tests.items():
            table = coverage_tests.coverage_tests(frame, by=by, keys=keys, where=where)
            parts[name].append(table.assign(PERIOD=period))
        # exclude_covid(frame), its columns the MCS reads, after the tests (not beside them)
        part = frame if where is None else frame.loc[where, MCS_COLUMNS].reset_index(drop=True)
        table = mcs.mcs_table(part, size=size, reps=reps, seed=seed)
        parts["mcs"].append(table.assign(PERIOD=period))
        del part
    out = {}
    for name, pieces in parts.items():
        table = pd.concat(pieces, ignore_index=True)
        out[name] = table[["PERIOD", *table.columns[:-1]]]
    return out


def write_plot_data(pdir: Path, tables: dict[str, pd.DataFrame], models: list[str]) -> list[Path]:
    """Wide CSVs (one column per model, empty for a model without scores) that `dvc plots`
    can draw without a custom template; `models` is every model of the config."""
    pinball = tables["pinball"]
    pooled = pinball.assign(W=pinball["PINBALL"] * pinball["N"])
    pooled = pooled.loc[pooled["PERIOD"] == "all"].groupby(["HORIZON", "MODEL"])[["W", "N"]].sum()
    by_h = (pooled["W"] / pooled["N"]).unstack("MODEL").reindex(columns=models).reset_index()
    cov = tables["coverage"]
    cov = cov.loc[cov["PERIOD"] == "all"].assign(HIT=cov["COVERAGE"] * cov["N"])
    cov = cov.groupby(["QUANTILE", "MODEL"])[["HIT", "N"]].sum()
    by_q = (cov["HIT"] / cov["N"]).unstack("MODEL").reindex(columns=models).reset_index()
    # the nominal line in a file of its own: dvc.yaml draws coverage.csv's columns from the
    # config's model list (${model_names}) and this file's `nominal` beside them
    by_q.insert(1, "nominal", by_q["QUANTILE"])
    nominal = by_q[["QUANTILE", "nominal"]]
    paths = [pdir / "pinball_by_horizon.csv", pdir / "coverage.csv", pdir / "coverage_nominal.csv"]
    for path, table in zip(paths, (by_h, by_q, nominal), strict=True):
        table.columns = [str(c) for c in table.columns]
        write_text(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    return paths
