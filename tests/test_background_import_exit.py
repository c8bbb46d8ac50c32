"""A run that ends while assemble's modules are being imported in the background (a signal's
stop at the start of assemble) waits for that import before the interpreter finalizes: a
daemon thread still inside an extension's C++ code at finalization is ended by pthread_exit,
whose unwinding through that code once aborted the run ("terminate called without an active
exception", exit -6 instead of 143: test_chaos_signals' assemble-SIGTERM in a fresh clone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# a module whose import takes a moment, then leaves a mark: the import ran to its end
SLOW_MODULE = """
import time
from pathlib import Path
time.sleep(1.0)
Path({mark!r}).write_text("imported")
"""

SCRIPT = """
import sys
sys.path.insert(0, {where!r})
from pipeline.runner import _import_in_background
_import_in_background("slow_to_import")
sys.exit(143)  # at once, as a stop's unwinding does
"""


def test_the_process_exits_only_after_its_background_import_ended(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    (tmp_path / "slow_to_import.py").write_text(SLOW_MODULE.format(mark=str(mark)))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(where=str(tmp_path))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 143, done.stderr
    # before, the interpreter finalized with the import under way: no mark
    assert mark.read_text() == "imported"
