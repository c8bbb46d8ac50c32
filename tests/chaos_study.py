"""The study the chaos tests break (tests/test_chaos_*.py): rw alone on 3 synthetic countries,
144 origins, 4 horizons, 3 quantiles (5,184 fits: a few seconds per run), run as a user runs it
(`python -m pipeline run` in a process of its own), and the files a resumed run must
reproduce byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

RW_STUDY = (
    "models.ar_qr.enabled=false",
    "models.lqr.enabled=false",
    "models.ensemble_nn.enabled=false",
    "models.climatology.enabled=false",
    "evaluation.combo.enabled=false",
    "evaluation.mcs_reps=50",
    "rolling_window.start_date=2012-01-01",
    "rolling_window.end_date=2023-12-01",
    "data.horizons=[1,3,6,12]",
    "data.synthetic.n_countries=3",
    "runtime.progress_bar=false",
    "runtime.dashboard_port=0",
)
FITS = 3 * 144 * 4 * 3
# what a resumed run must write as the uninterrupted one did
COMPARED = ("forecasts/all.parquet", "metrics.json", "train/rw.parquet")


def start(out: Path, *extra: str, new_session: bool = False) -> subprocess.Popen[str]:
    """`python -m pipeline run` of the study into `out` (stdout, stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *RW_STUDY, f"runtime.output_dir={out}", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=new_session,
    )  # fmt: skip


def run(out: Path, *extra: str) -> tuple[int, str]:
    """Run the study to its end: (exit code, stderr)."""
    proc = start(out, *extra)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def differing(out: Path, clean: Path) -> list[str]:
    """The compared files whose bytes differ from the uninterrupted run's (or are missing)."""
    return [
        name
        for name in COMPARED
        if not (out / name).exists() or (out / name).read_bytes() != (clean / name).read_bytes()
    ]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study run once, uninterrupted: what every broken-then-resumed run must equal."""
    out = tmp_path_factory.mktemp("chaos") / "clean"
    code, err = run(out)
    assert code == 0, err
    return out
