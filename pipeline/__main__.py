"""`python -m pipeline`: see pipeline.cli."""

import sys

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
