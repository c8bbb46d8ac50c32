"""JSON bundles of the metric tables for assemble: metrics.json, metrics_summary.json and
metrics_headline.json.

Both are built from `evaluate.metric_tables` (pass the tables when already computed), so the
JSON and the parquet tables cannot disagree. Keys nest period / metric / model / horizon /
quantile with the seed's labels ("h1", "q0.1"); a "mean" key pools the rows below it
(N-weighted), and numbers keep SIG_DIGITS significant digits (NaN/inf become null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import (
    BENCHMARK,
    HORIZON,
    MODEL,
    QUANTILE,
    check_frame,
    covid_mask,
    horizon_label,
    metric_tables,
    quantile_label,
)

SIG_DIGITS = 6


def _num(value: Any) -> float | int | None:
    """JSON-ready number rounded to SIG_DIGITS significant digits; NaN/inf -> None."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{SIG_DIGITS}g}")


def _nest(
    table: pd.DataFrame, value: str, levels: Sequence[str], leaf: str | None = None
) -> dict[str, Any]:
    """{model: {label(level1): {label(level2): value}}} from a tidy table; with `leaf`, the
    innermost key is `leaf` instead of the last level's label (e.g. "mean")."""
    labels = {HORIZON: horizon_label, QUANTILE: quantile_label}
    out: dict[str, Any] = {}
    for row in table.itertuples(index=False):
        keys = [labels[c](getattr(row, c)) for c in levels]
        keys = [*keys, leaf] if leaf is not None else keys
        node = out.setdefault(str(getattr(row, MODEL)), {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _num(getattr(row, value))
    return out


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (extra wins on leaves)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _pooled(table: pd.DataFrame, by: list[str], values: Sequence[str]) -> pd.DataFrame:
    """N-weighted means of `values` per `by` group: the pooled mean over the rows behind them."""
    weighted = (
        table[values].mul(table["N"], axis=0).assign(N=table["N"], **{c: table[c] for c in by})
    )
    sums = weighted.groupby(by, sort=True, observed=True).sum().reset_index()
    return sums.assign(**{c: sums[c] / sums["N"] for c in values})


def _with_means(table: pd.DataFrame, value: str, parts: Sequence[str] = ()) -> dict[str, Any]:
    """{model: {h: {q: value, "mean": ...}, "mean": ...}} from a (MODEL, HORIZON, QUANTILE)
    table; a mean pools the rows below it. With `parts` (numerator, denominator), `value` is
    their ratio and each mean the ratio of pooled parts (the relative pinball)."""
    out = _nest(table, value, (HORIZON, QUANTILE))
    for by, levels in (([MODEL, HORIZON], (HORIZON,)), ([MODEL], ())):
        pooled = _pooled(table, by, list(parts) or [value])
        if parts:
            pooled[value] = pooled[parts[0]] / pooled[parts[1]]
        _merge(out, _nest(pooled, value, levels, leaf="mean"))
    return out


def _by_period(tables: Mapping[str, pd.DataFrame], period: str) -> dict[str, pd.DataFrame]:
    return {k: t.loc[t["PERIOD"] == period].drop(columns="PERIOD") for k, t in tables.items()}


def _period_metrics(t: dict[str, pd.DataFrame], has_bench: bool) -> dict[str, Any]:
    crps_mean = _nest(_pooled(t["crps"], [MODEL], ["CRPS"]), "CRPS", (), leaf="mean")
    out: dict[str, Any] = {
        "n_scored": int(t["pinball"]["N"].sum()),
        "pinball": _with_means(t["pinball"], "PINBALL"),
        "coverage": _nest(t["coverage"], "COVERAGE", (HORIZON, QUANTILE)),
        "crps": _merge(_nest(t["crps"], "CRPS", (HORIZON,)), crps_mean),
        "crossing_rate": _nest(t["crossing"], "CROSSING_RATE", (HORIZON,)),
        "interval": {},
    }
    for column in ("COVERAGE", "NOMINAL", "WIDTH"):
        _merge(out["interval"], _nest(t["interval"], column, (HORIZON,), leaf=column.lower()))
    if has_bench:
        parts = ("PINBALL", "BENCHMARK_PINBALL")
        out["relative_pinball"] = _with_means(t["relative_pinball"], "RELATIVE_PINBALL", parts)
        out["dm"] = {}
        for column in ("MEAN_DIFF", "STAT", "P_VALUE", "P_HOLM"):
            _merge(out["dm"], _nest(t["dm"], column, (HORIZON,), leaf=column.lower()))
    return out


def compute_metrics(
    frame: pd.DataFrame,
    benchmark: str = BENCHMARK,
    *,
    tables: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """JSON-ready nested metrics for metrics.json, for all months and COVID months excluded.

    Keys: metrics[period][metric][model][h][q], period in ("all", "ex_covid"); "mean" keys
    pool the levels below them (pinball[m]["h1"]["mean"] over quantiles, pinball[m]["mean"]
    over horizons and quantiles). Numbers have 6 significant digits. Built from
    `metric_tables(frame, benchmark)` (pass `tables` when already computed), so the JSON and
    the parquet tables cannot disagree.
    """
    check_frame(frame)
    tables = metric_tables(frame, benchmark) if tables is None else tables
    has_bench = benchmark in set(frame[MODEL].dropna().unique().tolist())
    out: dict[str, Any] = {"benchmark_present": int(has_bench)}
    # the periods' row counts (period_frames' lengths) without copying the rows
    n_rows = {"all": len(frame), "ex_covid": len(frame) - int(covid_mask(frame).sum())}
    for period, count in n_rows.items():
        out[period] = {
            "n_rows": count,
            **_period_metrics(_by_period(tables, period), has_bench),
        }
    return out


def summary_metrics(
    frame: pd.DataFrame,
    benchmark: str = BENCHMARK,
    *,
    tables: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Headline numbers per period and model, pooled over horizons, quantiles and countries
    (a few columns in `dvc metrics show`, where compute_metrics gives hundreds):
    summary[period][model] = {pinball, relative_pinball, crps, interval_coverage,
    crossing_rate}."""
    check_frame(frame)
    tables = metric_tables(frame, benchmark) if tables is None else tables
    out: dict[str, Any] = {}
    for period in ("all", "ex_covid"):
        t = _by_period(tables, period)
        node: dict[str, Any] = {}
        for name, column in (("pinball", "PINBALL"), ("crps", "CRPS"),
                             ("interval", "COVERAGE"), ("crossing", "CROSSING_RATE")):  # fmt: skip
            label = {"interval": "interval_coverage", "crossing": "crossing_rate"}.get(name, name)
            _merge(node, _nest(_pooled(t[name], [MODEL], [column]), column, (), leaf=label))
        relative = _pooled(t["relative_pinball"], [MODEL], ["PINBALL", "BENCHMARK_PINBALL"])
        if len(relative):
            relative["R"] = relative["PINBALL"] / relative["BENCHMARK_PINBALL"]
            _merge(node, _nest(relative, "R", (), leaf="relative_pinball"))
        out[period] = node
    return out


def headline_metrics(
    summary: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]
) -> dict[str, Any]:
    """metrics_headline.json, the only DVC `metrics:` file (the columns `dvc exp show` compares):
    {"pinball": {model: ...}, "coverage": {model: ...}, "coverage_nominal": ...}, all months,
    pooled over horizons, quantiles and countries; coverage is the central interval's (lowest
    to highest level), taken from `summary_metrics` (`summary`) so the two files agree."""
    models = summary.get("all", {})
    interval = tables["interval"]
    nominal = interval.loc[interval["PERIOD"] == "all", "NOMINAL"].dropna().unique().tolist()
    return {
        "pinball": {m: v.get("pinball") for m, v in models.items()},
        "coverage": {m: v.get("interval_coverage") for m, v in models.items()},
        "coverage_nominal": _num(nominal[0]) if len(nominal) == 1 else None,
    }


def test_metrics(tables: Mapping[str, pd.DataFrame], mcs_size: float) -> dict[str, Any]:
    """metrics.json's coverage tests and Model Confidence Set (period "all"; the tables hold
    both periods): coverage_tests[model][h][q] = {n, hit_rate, lr_uc, p_uc, lr_ind, p_ind,
    lr_cc, p_cc, dq, p_dq, and each p_*_holm: Holm-adjusted over the model x horizon x level
    cells of its test in the period} pooled over countries; mcs[h][model] = {p_value, in_mcs}; the
    caveat on h > 1 hits; and, when `tables` holds it, the pinball decomposition
    (`decomposition_metrics`)."""
    from pipeline.evaluation.coverage_tests import (
        HOLM_COLUMNS,
        SERIAL_DEPENDENCE_NOTE,
        TEST_COLUMNS,
    )

    # each test column of the table (but N), then its Holm-adjusted p-values, in lower case
    test_keys = {c: c.lower() for c in (*TEST_COLUMNS, *HOLM_COLUMNS.values()) if c != "N"}
    tests, mcs = (tables[k].loc[tables[k]["PERIOD"] == "all"] for k in ("coverage_tests", "mcs"))

    node: dict[str, Any] = {}
    for row in tests.itertuples(index=False):
        leaf = node.setdefault(str(row.MODEL), {}).setdefault(horizon_label(row.HORIZON), {})
        leaf[quantile_label(row.QUANTILE)] = {"n": int(row.N)} | {
            key: _num(getattr(row, column)) for column, key in test_keys.items()
        }
    mcs_node: dict[str, Any] = {}
    for row in mcs.itertuples(index=False):
        mcs_node.setdefault(horizon_label(row.HORIZON), {})[str(row.MODEL)] = {
            "p_value": _num(row.P_VALUE),
            "in_mcs": int(bool(row.IN_MCS)),
        }
    out = {
        "coverage_tests": node,
        "mcs": {"size": _num(mcs_size), **mcs_node},
        "notes": {"coverage_tests": SERIAL_DEPENDENCE_NOTE},
    }
    if "pinball_decomposition" in tables:
        out["pinball_decomposition"] = decomposition_metrics(tables["pinball_decomposition"])
    return out


DECOMPOSITION_KEYS = {"SCORE": "score", "MISCALIBRATION": "miscalibration",
                      "DISCRIMINATION": "discrimination", "UNCERTAINTY": "uncertainty"}  # fmt: skip


def decomposition_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """metrics.json's pinball decomposition (period "all"): [model][h][q] = {n, score,
    miscalibration, discrimination, uncertainty}, score = miscalibration - discrimination +
    uncertainty."""
    node: dict[str, Any] = {}
    for row in table.loc[table["PERIOD"] == "all"].itertuples(index=False):
        leaf = node.setdefault(str(row.MODEL), {}).setdefault(horizon_label(row.HORIZON), {})
        leaf[quantile_label(row.QUANTILE)] = {"n": int(row.N)} | {
            key: _num(getattr(row, column)) for column, key in DECOMPOSITION_KEYS.items()
        }
    return node
