"""Benchmark: ensemble_nn training, batched members vs a Python loop over members.

Real Eurostat data (data/eurostat/hicp_manr.csv.gz, target prc_hicp_manr_CP00), the seed's
window (60 months), features y_t and lags 1, 2, 3, 6, 12, horizons 1, 3, 6, 12 in one head,
25 countries complete over the window (48-59 training rows each), 10 members, one thread.

Run from the repository root:
    .venv/bin/python benchmarks/bench_ensemble_nn.py            # everything (~10 min)
    .venv/bin/python benchmarks/bench_ensemble_nn.py --quick    # fewer repeats and sizes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.models._batched_mlp import train_predict_windows
from pipeline.models._ensemble_loop import fit_predict_member_loop
from pipeline.models._nn_data import WindowData, check_nn_params

DATA = Path(__file__).resolve().parents[1] / "data" / "eurostat" / "hicp_manr.csv.gz"
TARGET = "prc_hicp_manr_CP00"
LAGS = (1, 2, 3, 6, 12)
HORIZONS = (1, 3, 6, 12)
WINDOW = 60
N_COUNTRIES = 25
SEED_PARAMS = dict(
    quantiles=(0.1, 0.5, 0.9),
    units_per_layer=(32,) * 5,
    learning_rate=5e-5,
    epochs=1500,
    batch_size=32,
    patience=50,
    parallel_models=10,
    seed=0,
    validation_fraction=0.2,
    scale="per_country",
)


def load_panel(path: Path = DATA) -> pd.DataFrame:
    """Month x country matrix of the target (float, NaN where missing)."""
    frame = pd.read_csv(path, usecols=["TIME", "COUNTRY", TARGET])
    wide = frame.pivot(index="TIME", columns="COUNTRY", values=TARGET)
    wide.index = pd.PeriodIndex(wide.index, freq="M")
    return wide.sort_index()


def make_window(wide: pd.DataFrame, origin: str, n_countries: int = N_COUNTRIES) -> WindowData:
    """Training pairs (features_t, y_{t+h}) for t in [T-W+1, T-1] as DESIGN.md defines them."""
    T = wide.index.get_loc(pd.Period(origin, freq="M"))
    start = T - WINDOW + 1
    block = wide.iloc[start - max(LAGS) : T + 1]
    countries = [c for c in block.columns if block[c].notna().all()][:n_countries]
    X, Y, C, TM = [], [], [], []
    X_new = []
    for code, c in enumerate(countries):
        s = wide[c].to_numpy()
        ts = np.arange(start, T)  # rows with at least the h=1 target inside the window
        feats = np.stack([s[ts]] + [s[ts - lag] for lag in LAGS], axis=1)
        tgt = np.stack(
            [np.where(ts + h <= T, s[np.minimum(ts + h, T)], np.nan) for h in HORIZONS], axis=1
        )
        X.append(feats)
        Y.append(tgt)
        C.append(np.full(ts.size, code))
        TM.append(ts)
        X_new.append([s[T]] + [s[T - lag] for lag in LAGS])
    return WindowData(
        X=np.concatenate(X),
        y=np.concatenate(Y),
        country=np.concatenate(C),
        X_new=np.asarray(X_new),
        country_new=np.arange(len(countries)),
        time=np.concatenate(TM),
    )


def seed_windows(wide: pd.DataFrame) -> list[WindowData]:
    """The seed's 72 origins 2018-01 .. 2023-12."""
    origins = pd.period_range("2018-01", "2023-12", freq="M")
    return [make_window(wide, str(o)) for o in origins]


def _time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and median CPU (process) seconds of `repeats` calls.

    CPU time is reported too because this machine is shared: with one thread it is close to
    the wall time an idle core would give.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and batch sizes")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    wide = load_panel()
    windows = seed_windows(wide)
    results: dict[str, object] = {"threads": torch.get_num_threads()}

    # 1) batched vs member loop, same fixed work: 20 epochs, no early stopping
    fixed = check_nn_params(**{**SEED_PARAMS, "epochs": 20, "patience": 10_000})
    reps = 1 if args.quick else 3
    b_wall, b_cpu = _time(lambda: train_predict_windows(windows[:1], fixed, device), reps)
    l_wall, l_cpu = _time(lambda: fit_predict_member_loop(windows[0], fixed, device), reps)
    results["fixed_20_epochs_one_window"] = {
        "repeats": reps,
        "batched_wall_s": b_wall,
        "batched_cpu_s": b_cpu,
        "member_loop_wall_s": l_wall,
        "member_loop_cpu_s": l_cpu,
        "speedup_wall": l_wall / b_wall,
        "speedup_cpu": l_cpu / b_cpu,
    }
    print(json.dumps(results, indent=2), flush=True)

    # 2) seed settings (1500 epochs, patience 50): seconds per window, G windows batched
    spec = check_nn_params(**SEED_PARAMS)
    sizes = (1, 4, 18) if args.quick else (1, 4, 8, 18, 36)
    per_g = {}
    for G in sizes:
        w0, c0 = time.perf_counter(), time.process_time()
        res = train_predict_windows(windows[:G], spec, device)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        epochs = np.concatenate([r.epochs for r in res])
        per_g[G] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "wall_s_per_window": wall / G,
            "cpu_s_per_window": cpu / G,
            "member_epochs_median": float(np.median(epochs)),
            "member_epochs_max": int(epochs.max()),
            "member_epochs_per_window": float(epochs.sum() / G),
        }
        print(G, json.dumps(per_g[G]), flush=True)
    results["seed_settings"] = per_g
    best = min(per_g.values(), key=lambda r: r["cpu_s_per_window"])
    # 72 origins on 2 single-threaded workers, horizons sharing one head
    results["seed_grid_estimate_s_2_workers"] = 72 * best["cpu_s_per_window"] / 2
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
