"""train's forecast table alone: the rows' build (forecast_chunks) and pyarrow's write, CPU.

Prepares the rw study of N countries (N x 912 fits) into OUT (reused when OUT already holds
a prepared panel), builds the model's fit groups, fills every fit's forecasts with seeded
random values as results of 65,536 fits arrive (the real ones differ only in how well they
compress: FORECAST is written uncompressed; rw's ALPHA is null) and then, R times, times the build alone (the chunks consumed) and the build
with train's write (train/<model>.parquet's options) into OUT/table.parquet. Prints the
process CPU seconds of each (and of decoding and storing the results: `fill`, once),
medians over the repeats, the rows and the file's size.

The build takes RunState's forecasts as they are kept (runtime/execute/train_loop.py), so
the same script measures any tree: run it with that tree on PYTHONPATH.

Usage: python benchmarks/bench_train_table.py N OUT [R]
(issue 18, "The train table's driver cost": 1100 and 2400)
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import bench_scale as bs

    from pipeline.config import validate
    from pipeline.config.compose import compose_dict
    from pipeline.data.prepared import load_panel_columns
    from pipeline.io import write_parquet_tables
    from pipeline.models.plugins.registry import adapter_for
    from pipeline.runtime.fits.forecast_rows import TABLE_OPTIONS
    from pipeline.runtime.fits.shared_plan import fit_groups
    from pipeline.stages.prepare import prepare

    n, out = int(sys.argv[1]), Path(sys.argv[2])
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    config = validate(compose_dict(bs.rw_overrides(n, out)))
    if not (out / "prepared").exists():
        prepare(config, Path.cwd())
    panel = load_panel_columns(out)
    groups = fit_groups(panel, config, adapter_for(config, "rw"))
    state, fill = _filled_state(config, groups)
    build, write = [], []
    rows = size = 0
    target = out / "table.parquet"
    schema, chunks = _as_train_writes(state, panel)
    for _ in range(repeats):
        t0 = time.process_time()
        rows = sum(t.num_rows for t in chunks())
        t1 = time.process_time()
        write_parquet_tables(target, schema, chunks(), options=TABLE_OPTIONS)
        t2 = time.process_time()
        build.append(t1 - t0)
        write.append(t2 - t1)
        size = target.stat().st_size
    fits = sum(len(g) for g in groups)
    report = {
        "fits": fits,
        "fill_cpu_s": round(fill, 3),
        "rows": rows,
        "build_cpu_s": round(statistics.median(build), 3),
        "build_min_cpu_s": round(min(build), 3),
        "build_and_write_cpu_s": round(statistics.median(write), 3),
        "us_per_fit": round(1e6 * statistics.median(write) / fits, 3),
        "file_mb": round(size / 1e6, 2),
    }
    print(json.dumps(report))


def _as_train_writes(state, panel):  # type: ignore[no-untyped-def]
    """The schema and the chunks train writes: TARGET and MODEL as dictionary arrays in a
    tree with forecast_rows.written_schema (tablebuild, 2026-12-06), plain before."""
    import pipeline.runtime.fits.forecast_rows as forecast_rows
    from pipeline.schema import forecast_arrow_schema

    if hasattr(forecast_rows, "written_schema"):
        return forecast_rows.written_schema(), lambda: state.forecast_chunks(panel, encoded=True)
    return forecast_arrow_schema(), lambda: state.forecast_chunks(panel)


def _filled_state(config, groups, fpt: int = 65536):  # type: ignore[no-untyped-def]
    """A RunState whose every fit is known, fed as train feeds it: one result of seeded
    forecasts per task of `fpt` fits (train_phases' tasks), each arriving as npz bytes (a
    worker's shard) decoded as worker.shard_arrays decodes it, then stored as that tree's
    RunState._done stores it (a tree that keeps each result's arrays, or the older copy into
    NaN-filled arrays of every fit). Returns the state and the CPU seconds of the decoding
    and storing (the results' making excluded)."""
    import pipeline.runtime.execute.train_loop as train_loop

    rng = np.random.default_rng(0)
    Q = len(config.data.quantiles)
    results = []
    for gi, g in enumerate(groups):
        shape = (g.rows.shape[1], len(g.horizons), Q)
        for lo in range(0, len(g), fpt):
            idx = np.arange(lo, min(lo + fpt, len(g)))
            npz = io.BytesIO()
            alpha = np.full((idx.size, Q), np.nan)  # rw's: none
            np.savez(npz, pred=rng.normal(size=(idx.size, *shape)), alpha=alpha)
            results.append((gi, idx, npz.getvalue()))

    def arrived(npz: bytes) -> tuple[np.ndarray, np.ndarray]:
        with np.load(io.BytesIO(npz)) as arrays:
            return arrays["pred"], arrays["alpha"]

    state = train_loop.RunState.__new__(train_loop.RunState)
    state.config, state.model, state.groups = config, "rw", groups
    t0 = time.process_time()
    if hasattr(train_loop, "KeptForecasts"):
        shapes = [(len(g), g.rows.shape[1], len(g.horizons)) for g in groups]
        state.kept = train_loop.KeptForecasts(shapes, Q)
        for gi, idx, npz in results:
            state.kept.add(gi, idx, *arrived(npz))
    else:
        state.pred = [
            np.full((len(g), g.rows.shape[1], len(g.horizons), Q), np.nan) for g in groups
        ]
        state.alpha = [np.full((len(g), Q), np.nan) for g in groups]
        state.have = [np.zeros(len(g), dtype=bool) for g in groups]
        for gi, idx, npz in results:
            state.pred[gi][idx], state.alpha[gi][idx] = arrived(npz)
            state.have[gi][idx] = True
    return state, time.process_time() - t0


if __name__ == "__main__":
    main()
