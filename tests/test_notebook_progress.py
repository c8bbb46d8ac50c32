"""pipeline.backtest in a real Jupyter kernel shows each model's progress bar as one notebook
output updated in place (runtime.progress_bar=false shows none).

Needs ipykernel and nbclient, which the project's environment does not install (they are not
dependencies of qpipe): skipped there. Run it where they are (a venv with both, the project's
packages importable) to check the notebook path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tiny_study

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def _run_in_kernel(tmp_path: Path, overrides: list[str]) -> list[dict]:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(f"import pipeline\nresult = pipeline.backtest({overrides!r})")
    ]
    # the kernel (this interpreter: ipykernel's own kernelspec) imports this checkout's package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3")
    client.execute(cwd=str(tmp_path), env=env)
    return [dict(o) for o in notebook.cells[0].outputs]


@pytest.mark.slow
def test_backtest_in_a_notebook_shows_a_progress_bar_per_model(tmp_path):
    shown = tiny_study(f"runtime.output_dir={tmp_path / 'out'}", "runtime.progress_bar=true")
    outputs = _run_in_kernel(tmp_path, shown)
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    bars = [o["data"] for o in outputs if o["output_type"] == "display_data"]
    # ar_qr and lqr (3 countries x 6 origins x 1 horizon each) train side by side, each drawn
    # to its final state in its own output (in the order their trains started)
    names = [b["text/plain"].split(":")[0] for b in bars]
    assert sorted(names) == ["ar_qr", "lqr"], outputs
    for name, bar in zip(names, bars, strict=True):
        assert "18/18 fits" in bar["text/plain"] and "failed 0" in bar["text/plain"]
        assert bar["text/html"].startswith(f"<b>{name}</b> "), outputs  # one model's bar
        assert '<progress value="18" max="18">' in bar["text/html"]

    quiet = tiny_study(f"runtime.output_dir={tmp_path / 'quiet'}", "runtime.progress_bar=false")
    outputs = _run_in_kernel(tmp_path, quiet)
    assert not [o for o in outputs if o["output_type"] in ("error", "display_data")], outputs
