"""Ex-post sensitivity of the recalibration settings on a finished study (no refit).

Reads the study's train tables (every origin, the calibration warm-up included), recalibrates
them with each setting below through `pipeline.evaluation.calibration.calibrate` (the code
assemble runs), and prints, per setting, how many (model, horizon) cells have both tail hit
rates within 5 pp of nominal on the scored origins, the largest miss, and each model's pooled
pinball calibrated / raw. The settings are compared on the evaluation sample itself, so this
is a sensitivity table, not a way to choose a setting without look-ahead.

    .venv/bin/python benchmarks/calibration_sensitivity.py --output-dir studies/seed_calibrated
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.evaluation.calibration import CalibrationSettings, calibrate, window_scale

SETTINGS = [
    CalibrationSettings("tracker", step=0.05, min_history=0),
    CalibrationSettings("tracker", step=0.2, min_history=0),
    CalibrationSettings("tracker", step=0.5, min_history=0),
    CalibrationSettings("tracker", step=1.0, min_history=0),
    CalibrationSettings("tracker", step=0.2, pool="panel", min_history=0),
    CalibrationSettings("conformal", window=36, min_history=12),
    CalibrationSettings("conformal", window=36, pool="panel", min_history=12),
]
TAILS = (0.1, 0.9)
TOLERANCE = 0.05


def pinball(frame: pd.DataFrame) -> pd.Series:
    u = frame["ACTUAL"] - frame["FORECAST"]
    return np.maximum(frame["QUANTILE"] * u, (frame["QUANTILE"] - 1) * u)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("studies/seed_calibrated"))
    args = parser.parse_args()
    out = args.output_dir
    config = yaml.safe_load((out / "config.yaml").read_text())
    frame = pd.concat(
        [pd.read_parquet(p) for p in sorted((out / "train").glob("*.parquet"))], ignore_index=True
    )
    panel = pd.read_parquet(out / "data/prepared/panel.parquet")
    size = int(config.get("rolling_window", {}).get("size", 60))
    scale = window_scale(panel.astype({"COUNTRY": "string"}), size)
    start = pd.Timestamp(config.get("rolling_window", {}).get("start_date", "2018-01-01"))

    def scored(d: pd.DataFrame) -> pd.DataFrame:
        return d[(d["WINDOW_END"] >= start) & d["ACTUAL"].notna() & d["FORECAST"].notna()]

    raw = scored(frame)
    raw_loss = raw.assign(L=pinball(raw)).groupby("MODEL")["L"].mean()
    models = sorted(raw_loss.index)
    print(
        "| setting | cells within 5 pp | largest miss (pp) | "
        + " | ".join(f"{m} pinball cal/raw" for m in models)
        + " |"
    )
    print("|---|---:|---:|" + "---:|" * len(models))
    for s in SETTINGS:
        cal = scored(calibrate(frame, s, scale))
        hits = (
            cal.assign(HIT=cal["ACTUAL"] <= cal["FORECAST"])
            .groupby(["MODEL", "HORIZON", "QUANTILE"])["HIT"]
            .mean()
            .unstack("QUANTILE")
        )
        miss = pd.concat([(hits[q] - q).abs() for q in TAILS], axis=1).max(axis=1)
        loss = cal.assign(L=pinball(cal)).groupby("MODEL")["L"].mean()
        name = f"{s.method}, " + (
            f"step {s.step}" if s.method == "tracker" else f"window {s.window}"
        )
        ratios = [loss[f"{m}_cal"] / raw_loss[m] for m in models]
        print(
            f"| {name}, pool {s.pool} | {int((miss <= TOLERANCE + 1e-12).sum())} / {len(miss)} | "
            f"{100 * miss.max():.1f} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |"
        )


if __name__ == "__main__":
    main()
