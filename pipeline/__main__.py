"""`python -m pipeline`: see pipeline.cli."""

import gc
import sys

# A stage process's imports (numpy, pyarrow, Dask) leave ~66k objects that the cyclic collector
# tracks and it rarely makes cycles after: at Python's default (a pass per 700 net allocations)
# the imports alone trigger ~185 passes that free ~800 objects, ~0.03-0.05 CPU-s per process
# (issue 18 item 7; benchmarks/README, "End to end after the 2026-12-06 12:35 merge").
# Collection stays on: cyclic garbage is still freed, after 20,000 allocations instead of 700.
gc.set_threshold(20_000, 10, 10)

try:
    from pipeline.cli import main
except ModuleNotFoundError as error:  # e.g. `dvc repro` with the system python first on PATH
    print(
        f"error: {error.name} is not installed for {sys.executable}: run with the project's venv "
        "active (`source .venv/bin/activate`; `make setup` creates it)",
        file=sys.stderr,
    )
    sys.exit(2)

if __name__ == "__main__":  # guard required: train starts Dask worker processes
    sys.exit(main())
