"""CPU cost of train's errors export (`ProgressStore.export_errors` -> progress/errors.parquet)
with N failures in the progress store (issue 18, item 8: the file's fixed schema).

Builds a store under --output-dir with N rows in its errors table, exports them five times and
prints the median and least CPU milliseconds (`time.process_time`), whether pandas was
imported (train never loads it) and the file's size. Run it with another tree on PYTHONPATH
for the before figure.

Usage:
  python benchmarks/bench_errors_export.py 100000 --output-dir /tmp/errors_bench
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from pipeline.runtime.store.progress import ProgressStore, db_path

TRACE = "Traceback (most recent call last):\n  ...\nValueError: boom\n" * 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("failures", type=int)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args()
    out = args.output_dir
    shutil.rmtree(out, ignore_errors=True)
    rows = [
        ("run1", "m", f"{i:064x}", "AA", 1, "2018-01-01", 1, "ValueError", "boom", TRACE, 1.7e9 + i)
        for i in range(args.failures)
    ]
    with ProgressStore(db_path(out)) as store:
        with store.conn:
            store.conn.executemany(
                "INSERT INTO errors (run_id, model, key, country, horizon, origin, attempt, "
                "error_type, message, traceback, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
        times = []
        for _ in range(5):
            t0 = time.process_time()
            store.export_errors(out)
            times.append(time.process_time() - t0)
    size = (out / "progress" / "errors.parquet").stat().st_size
    print(
        f"{args.failures} failures: export_errors {statistics.median(times) * 1e3:.1f} ms CPU "
        f"(least {min(times) * 1e3:.1f}); pandas imported: {'pandas' in sys.modules}; "
        f"{size} bytes"
    )


if __name__ == "__main__":
    main()
