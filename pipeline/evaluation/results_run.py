"""The results page's account of the run itself: its set-up, the countries and fits it covered,
the wall time per stage and the workers' memory against the probe's plan
(pipeline.evaluation.results assembles the page)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io import read_json


def setup_section(meta: dict[str, Any], params: dict[str, Any] | None) -> str:
    lines = ["## Set-up\n"]
    lines.append(
        f"- target `{meta['target']}`, data {meta['first_month']} .. {meta['last_month']}, missing-value policy `{meta['missing']}`"
    )
    lines.append(f"- lags {meta['lags']} (ar_qr uses 0..p-1), horizons {meta['horizons']}")
    if params:
        rw = params["rolling_window"]
        lines.append(
            f"- window {rw['size']} months, origins {rw['start_date'][:7]} .. {rw['end_date'][:7]} every {rw['step']} month(s); "
            f"quantiles {params['data']['quantiles']}"
        )
        if rw.get("calibration_start"):
            lines.append(
                f"- calibration warm-up: origins from {str(rw['calibration_start'])[:7]} are fitted and "
                f"forecast to feed the calibrators, and never scored"
            )
        cal = params.get("calibration") or {}
        if cal.get("method", "none") != "none":
            lines.append(
                f"- recalibration `{cal['method']}` (step {cal.get('step')}, window {cal.get('window')}, "
                f"pool `{cal.get('pool')}`, minimum history {cal.get('min_history')}): `<model>_cal` rows"
            )
        users = {
            name: entry["_target_"]
            for name, entry in (params.get("models") or {}).items()
            if isinstance(entry, dict) and "_target_" in entry and entry.get("enabled", True)
        }
        if users:  # user models (docs/MODELS.md), plugged in by configuration
            lines.append(
                f"- experiment `{params.get('name')}`; user models: "
                + ", ".join(f"`{n}` (`{t}`)" for n, t in sorted(users.items()))
            )
    lines.append(
        "- countries with gaps: leading gaps are dropped, a country's panel ends at its last observation "
        "(the UK at 2020-11), and a fit exists only where its whole window (with lags) is observed; "
        "late starters (AL, XK, ME, ...) therefore enter at later origins and the UK leaves after its last window."
    )
    return "\n".join(lines) + "\n"


def coverage_section(meta: dict[str, Any], progress: pd.DataFrame, output_dir: Path) -> str:
    lines = ["## Countries and fits covered\n"]
    lines.append(f"- {len(meta['countries'])} countries kept: {', '.join(meta['countries'])}")
    if meta.get("skipped"):
        for country, reason in sorted(meta["skipped"].items()):
            lines.append(f"- skipped {country}: {reason}")
    counts = progress.groupby(["model", "status"]).size().unstack(fill_value=0)
    fits = progress.groupby("model")["key"].nunique()
    missing_path = output_dir / "forecasts/missing.parquet"
    n_missing = len(pd.read_parquet(missing_path)) if missing_path.exists() else 0
    lines.append("\n| model | fits | progress rows | done | failed | pending |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for model in _ordered(counts.index):
        row = counts.loc[model]
        lines.append(
            f"| {model} | {fits[model]:,} | {int(row.sum()):,} | {int(row.get('done', 0)):,} | "
            f"{int(row.get('failed', 0)):,} | {int(row.get('pending', 0)) + int(row.get('training', 0)):,} |"
        )
    lines.append(
        f"\nA progress row is one (model, country, quantile, horizon, origin); forecasts missing from the tables: {n_missing}."
    )
    return "\n".join(lines) + "\n"


UNRECORDED = "(not recorded)"


def cost_section(
    output_dir: Path, progress: pd.DataFrame, timings: Mapping[str, Mapping[str, Any]]
) -> str:
    lines = ["## Wall time per stage\n"]
    if timings:
        lines.extend(_stage_table(timings))
    else:
        lines.append("No timings recorded (logs/timings.json is missing or unreadable).")
    lines.append("\n## Memory: workers against the probe's plan\n")
    probe = read_json(output_dir / "probe.json") if (output_dir / "probe.json").exists() else None
    measured = output_dir / "probe_measurements.json"
    measurements = read_json(measured) if measured.exists() else {}
    if probe:
        lines.append(
            f"Plan: `memory_limit` {probe['memory_limit_mb']} MiB per worker x "
            f"{probe.get('threads_per_worker', 1)} thread (the number of workers follows the "
            "machine train ran on)."
        )
    peaks = progress.dropna(subset=["peak_mb"]).groupby(["model", "worker"])["peak_mb"].max()
    if not peaks.empty:
        lines.append(
            "\n| model | worker | peak RSS (MiB) | probe estimate (MiB) | peak / estimate | peak / limit |"
        )
        lines.append("|---|---|---:|---:|---:|---:|")
        for (model, worker), peak in peaks.items():
            estimate = _probe_estimate(measurements, model)
            limit = probe["memory_limit_mb"] if probe else float("nan")
            ratio = f"{peak / estimate:.2f}" if estimate else "-"
            lines.append(
                f"| {model} | {worker} | {peak:.0f} | {estimate or '-'} | {ratio} | {peak / limit:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _stage_table(timings: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each stage's seconds from the last run that did its work: a no-op rerun records its
    stages as skipped in ~0 s and keeps that run under "worked" (runtime.store.timings), and
    the page's tables and memory come from that run, not from the rerun."""
    order = {"prepare": 0, "probe": 1, "assemble": 3}
    rows, runs, skipped_by = [], set(), {}
    for stage, latest in sorted(timings.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])):
        worked = latest.get("worked") if latest.get("status") == "skipped" else None
        shown = worked if isinstance(worked, Mapping) else latest
        if shown is not latest:
            skipped_by.setdefault(_when(latest.get("run")), []).append(stage)
        runs.add(_when(shown.get("run")))
        rows.append((stage, shown))
    lines = []
    if runs == {UNRECORDED}:
        lines.append("The run's start was not recorded (logs/timings.json of an older qpipe).")
    elif len(runs) == 1:
        lines.append(f"Every figure below comes from the run started {runs.pop()}.")
    else:
        lines.append("Each stage's figure comes from the last run that did its work (column run).")
    for when, stages in sorted(skipped_by.items()):
        lines.append(
            f"The later run started {when} found {_names(stages)} unchanged and skipped "
            f"{'it' if len(stages) == 1 else 'them'} (a no-op: ~0 s, not shown)."
        )
    lines.append("\n| stage | seconds | status | run |")
    lines.append("|---|---:|---|---|")
    total = 0.0
    for stage, entry in rows:
        total += float(entry["seconds"])
        lines.append(
            f"| {stage} | {float(entry['seconds']):.1f} | {entry['status']} | {_when(entry.get('run'))} |"
        )
    lines.append(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) | | |")
    return lines


def _when(stamp: Any) -> str:
    """`2026-12-06T04:30:12Z` as `2026-12-06 04:30:12 UTC`; an older qpipe recorded none."""
    if not isinstance(stamp, str) or len(stamp) < 19:
        return UNRECORDED
    return f"{stamp[:10]} {stamp[11:19]} UTC"


def _names(stages: list[str]) -> str:
    quoted = [f"`{s}`" for s in stages]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _probe_estimate(measurements: dict[str, Any], model: str) -> int | None:
    entry = measurements.get("models", {}).get(model) if isinstance(measurements, dict) else None
    if not entry:
        return None
    for key in ("estimated_worker_mb", "worker_estimate_mb", "peak_mb"):
        if key in entry:
            return round(float(entry[key]))
    return None


def _ordered(names: Any) -> list[str]:
    from pipeline.models.plugins.registry import order

    return order(names)
