"""What a task of given models imports: the worker's task function and the modules each model's
fit function imports in its body (where the built-in adapters import their solvers), read from
its bytecode: torch for lqr and ensemble_nn, none of it for rw, climatology or ar_qr.

The driver's early child (pipeline.runner) imports these ahead of train, and the probe's child
imports them before it measures the worker baseline, so that baseline is what a worker running
these models holds, not more (a torch import is about 170 MiB that a numpy-only study's
workers never load).
"""

from __future__ import annotations

import dis
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import StudyConfig

TASK_MODULE = "pipeline.runtime.execute.worker"


def task_imports(config: StudyConfig, models: list[str]) -> tuple[str, ...]:
    """The task function's module, then each model's fit-function imports, without repeats."""
    from pipeline.models.plugins.registry import adapter_for

    found = [TASK_MODULE]
    for name in models:
        code = getattr(adapter_for(config, name).fit_batch, "__code__", None)
        if code is not None:
            found += [i.argval for i in dis.get_instructions(code) if i.opname == "IMPORT_NAME"]
    return tuple(dict.fromkeys(found))


def imports_torch(modules: tuple[str, ...]) -> bool:
    """Whether any of `modules` imports torch at module level (read from its compiled code, not
    run), or cannot be read (then assumed to). The probe starts its child early only for tasks
    that do not (pipeline.stages.probe_process.start_early)."""
    import importlib.util

    for name in modules:
        if name == TASK_MODULE:
            continue
        try:
            spec = importlib.util.find_spec(name)
            code = spec.loader.get_code(name) if spec and spec.loader else None  # type: ignore[attr-defined]
        except (ImportError, AttributeError, ValueError, SyntaxError):
            code = None
        if code is None:
            return True
        names = (i.argval for i in dis.get_instructions(code) if i.opname == "IMPORT_NAME")
        if any(str(n).split(".")[0] == "torch" for n in names):
            return True
    return False
