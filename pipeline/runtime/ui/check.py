"""`python -m pipeline check`: is this machine ready to run a study? Says what is wrong and how
to fix it."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path

REQUIRED = (
    "dask",
    "distributed",
    "pandas",
    "numpy",
    "torch",
    "pyarrow",
    "dvc",
    "yaml",
    "psutil",
    "hydra",
    "sklearn",
    "rich",
    "matplotlib",
)


def run_checks(overrides: Sequence[str] = ()) -> int:
    """Print one line per check; return 0 when all pass, 1 otherwise."""
    problems = 0

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal problems
        problems += not ok
        print(f"[{'ok' if ok else 'FAIL'}] {what}: {detail}")

    for module in REQUIRED:
        try:
            imported = importlib.import_module(module)
            report(True, f"import {module}", getattr(imported, "__version__", "present"))
        except Exception as error:
            report(False, f"import {module}", f"{error} (fix: make setup, or pip install -e .)")
    try:
        import bokeh
        from distributed.dashboard.core import BOKEH_VERSION  # noqa: F401

        report(True, "dashboard", f"bokeh {bokeh.__version__}: the Dask dashboard will render")
    except Exception as error:
        report(False, "dashboard", f"bokeh missing or unusable ({error}); pip install 'bokeh>=3.1'")

    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = psutil.virtual_memory()
    report(True, "cores", f"{cores} usable")
    report(
        memory.available > 1 << 30,
        "RAM",
        f"{memory.available / 2**30:.1f} GiB available of {memory.total / 2**30:.1f} GiB",
    )

    try:
        from pipeline.config.compose import compose_config
        from pipeline.data import load_raw

        config = compose_config(overrides)
        raw = load_raw(config.data, Path.cwd(), seed=config.seed)
        report(
            True,
            "data",
            f"{config.data.source}: {raw['COUNTRY'].nunique()} countries, {len(raw)} rows, "
            f"target {config.data.target}",
        )
    except Exception as error:
        report(False, "data", str(error))
    print("all checks passed" if problems == 0 else f"{problems} check(s) failed")
    return 0 if problems == 0 else 1
