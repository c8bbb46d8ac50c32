"""Fit-cache write and load cost: the driver's task shards vs one fsynced .npz per fit.

Baseline (what workers did before issue 13): `pipeline.io.write_npz` per fit (temp file,
fsync, rename), read back with `read_npz`. Ours: `FitCache.write_shard` per task of
`--per-task` fits (one npz + one index, both fsynced), read back with `FitCache.verify`
(every entry's sha256 checked). Entries are shaped like an ar_qr fit of the seed grid
(p = 12, 3 quantiles). Medians over `--repeats` runs, both measured in this run.

Usage: python benchmarks/bench_cache.py [--fits 2000] [--per-task 64] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.io import read_npz, write_npz
from pipeline.runtime.store.fit_cache import FitCache


def entry(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "pred": rng.normal(size=(1, 1, 3)),
        "alpha": np.full(3, np.nan),
        "countries": np.array(["DE"]),
        "rows": np.ones(1, dtype=bool),
        "state_coef": rng.normal(size=(3, 13)),
        "state_crossing": np.array(0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fits", type=int, default=2000)
    parser.add_argument("--per-task", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    entries = {f"{i:032x}": entry(rng) for i in range(args.fits)}
    keys = list(entries)
    rows: dict[str, list[float]] = {
        k: [] for k in ("old_write", "new_write", "old_load", "new_load")
    }
    for _ in range(args.repeats):
        root = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=args.dir))
        t0 = time.perf_counter()
        for k in keys:
            write_npz(root / "old" / k[:2] / f"{k}.npz", entries[k])
        rows["old_write"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loaded = {k: read_npz(root / "old" / k[:2] / f"{k}.npz") for k in keys}
        rows["old_load"].append(time.perf_counter() - t0)
        assert len(loaded) == args.fits
        cache = FitCache(root / "new", "ar_qr")
        t0 = time.perf_counter()
        for lo in range(0, args.fits, args.per_task):
            cache.write_shard({k: entries[k] for k in keys[lo : lo + args.per_task]}, f"t{lo}")
        rows["new_write"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = cache.verify()
        rows["new_load"].append(time.perf_counter() - t0)
        assert len(report.entries) == args.fits and not report.damaged_keys
        shutil.rmtree(root)
    med = {k: statistics.median(v) for k, v in rows.items()}
    per = {k: 1e3 * v / args.fits for k, v in med.items()}
    print(f"{args.fits} fits, shards of {args.per_task}, median of {args.repeats} runs")
    print("| | per-fit npz (before) ms/fit | task shards (now) ms/fit | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| write | {per['old_write']:.3f} | {per['new_write']:.3f} | {per['old_write'] / per['new_write']:.1f}x |"
    )
    print(
        f"| load (+ checksum now) | {per['old_load']:.3f} | {per['new_load']:.3f} | {per['old_load'] / per['new_load']:.1f}x |"
    )


if __name__ == "__main__":
    main()
