"""The wheel, installed into a fresh venv, works outside the repository.

Built from the project's files, installed with --no-deps into a new venv that borrows this
venv's dependencies (a .pth line: seconds, offline), then used from an empty directory that
also holds a stray `pipeline.py` (which must never run): `qpipe write-config` + `qpipe run
--config` on a tiny study, `qpipe init proj` + `dvc repro` on the user's own panel file, and
`pipeline.backtest(...)` from Python, its result checked against the files it wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
from conftest import stop_processes, tiny_study
from test_api import synthetic_frame
from test_dvc_pipeline import BIN, dvc_env, project_files

from pipeline.models.plugins import registry

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

STUDY = tiny_study(*registry.only("ar_qr"))
STRAY = "import pathlib; pathlib.Path('STRAY_RAN').write_text('x'); raise SystemExit(3)\n"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (the dependencies come from this venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for rel in project_files(ROOT):
        if rel.startswith("pipeline/") or rel in ("pyproject.toml", "README.md"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("qpipe-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    # a plain path line: this venv's packages, but not its .pth files (its editable qpipe)
    (purelib / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # without PYTHONPATH: a checkout on it that holds qpipe.egg-info (left by `python -m build`
    # or `pip install .`) would make pip skip the install as "already satisfied"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([*pip, "--python", str(env / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   env=clean)  # fmt: skip
    assert (env / "bin" / "qpipe").is_file(), "the wheel was not installed"
    return env


def test_the_installed_wheel_runs_from_an_empty_directory(venv, tmp_path, request):
    env = dvc_env(tmp_path)
    env.pop("PYTHONPATH", None)  # the installed copy, not this checkout
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    work = tmp_path / "empty"
    work.mkdir()
    (work / "pipeline.py").write_text(STRAY)
    qpipe = str(venv / "bin" / "qpipe")

    # 2. a project of the user's own: qpipe init, their panel file, dvc repro (started first:
    # it runs beside 1 and 3, in its own directory; 2 cores)
    run([qpipe, "init", "proj"], work, env)
    proj = work / "proj"
    assert {"conf", "dvc.yaml", "params.yaml", ".gitignore", ".git", ".dvc"} <= {
        p.name for p in proj.iterdir()
    }
    (proj / "data").mkdir()
    synthetic_frame().to_csv(proj / "data" / "panel.csv", index=False)
    panel = ["data.source=panel", "data.path=data/panel.csv", "data.target=hicp"]
    run([qpipe, "compose", *STUDY, *panel], proj, env)
    repro_log = tmp_path / "repro.log"
    with repro_log.open("w") as log:
        repro = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=proj, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)  # fmt: skip
    request.addfinalizer(lambda: stop_processes([repro]))

    # 1. write-config + run --config, with nothing of the repository around
    run([qpipe, "write-config", "my.yaml", *STUDY], work, env)
    run([qpipe, "run", "--config", "my.yaml", "runtime.output_dir=run1"], work, env)
    assert (work / "run1" / "forecasts" / "all.parquet").is_file()
    assert (work / "run1" / "metrics.json").is_file()

    # 3. Python: backtest returns what it wrote (-P: a script in this directory would import
    # the stray pipeline.py, as any Python module of that name would)
    code = (
        "import json, sys, pipeline\n"
        "assert 'site-packages' in pipeline.__file__, pipeline.__file__\n"
        f"r = pipeline.backtest({[*STUDY, 'runtime.output_dir=run2']!r})\n"
        "r.forecasts.to_parquet('returned.parquet')\n"
        "json.dump(r.metrics, open('returned.json', 'w'))\n"
        "print(r.output_dir)\n"
    )
    out = run([str(venv / "bin" / "python"), "-P", "-c", code], work, env)
    assert str(work / "run2") in out
    returned = pd.read_parquet(work / "returned.parquet")
    written = pd.read_parquet(work / "run2" / "forecasts" / "all.parquet")
    pd.testing.assert_frame_equal(returned, written, check_dtype=False)
    assert json.loads((work / "returned.json").read_text()) == json.loads(
        (work / "run2" / "metrics.json").read_text()
    )

    # 2., its end: the pipeline ran and is up to date
    assert repro.wait(timeout=300) == 0, f"dvc repro failed:\n{repro_log.read_text()}"
    metrics = json.loads((proj / "metrics.json").read_text())
    assert metrics and (proj / "forecasts" / "all.parquet").is_file()
    assert "up to date" in run([str(BIN / "dvc"), "status"], proj, env)
    assert not (work / "STRAY_RAN").exists()  # the stray pipeline.py never ran
