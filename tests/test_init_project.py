"""`qpipe init DIR`: a user project with the repository's pipeline, nothing existing replaced.

The scaffold's dvc.yaml is the repository's dvc.yaml run by the installed `qpipe` (same stages,
params, outs, metrics and plots; only the package's own code deps are dropped), so the two
cannot drift apart. `dvc repro` inside a scaffolded project runs in tests/test_wheel.py.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest
import yaml
from test_dvc_pipeline import dvc_env

from pipeline.cli import main
from pipeline.config.compose import PACKAGED_CONF, compose_dict
from pipeline.init_project import HYDRA, SCAFFOLD, init_project

ROOT = Path(__file__).resolve().parents[1]


def test_the_scaffold_runs_the_repository_pipeline_with_the_installed_qpipe():
    repo = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    scaffold = yaml.safe_load((SCAFFOLD / "dvc.yaml.tmpl").read_text())
    assert scaffold["plots"] == repo["plots"]
    assert scaffold["stages"].keys() == repo["stages"].keys()
    for name, stage in repo["stages"].items():
        ours, theirs = scaffold["stages"][name], stage
        if "foreach" in theirs:
            assert ours["foreach"] == theirs["foreach"]
            ours, theirs = ours["do"], theirs["do"]
        assert ours["cmd"] == theirs["cmd"].replace("python -m pipeline", "qpipe")
        code = [d for d in theirs.get("deps", []) if not str(d).startswith("pipeline/")]
        assert ours.get("deps", []) == code, name
        for key in ("params", "outs", "metrics"):
            assert ours.get(key) == theirs.get(key), (name, key)


@pytest.mark.slow
def test_init_creates_what_is_missing_and_keeps_the_rest(tmp_path, monkeypatch):
    for key, value in dvc_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")  # the user's own: kept
    done = init_project(project)
    assert "kept dvc.yaml" in done and "git init" in done and "dvc init" in done
    assert (project / "dvc.yaml").read_text() == "stages: {}\n"
    assert not filecmp.dircmp(PACKAGED_CONF, project / "conf").diff_files
    assert (project / ".gitignore").read_text() == (SCAFFOLD / "gitignore").read_text()
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["name"] == compose_dict([], project / "conf")["name"]
    assert "config_dir = conf" in (project / ".dvc" / "config").read_text()

    # the project's conf/ is what composes there, and a second init changes nothing
    preset = project / "conf" / "experiment" / "mine.yaml"
    preset.write_text("# @package _global_\nname: mine\n")
    monkeypatch.chdir(project)
    assert compose_dict(["experiment=mine"])["name"] == "mine"
    before = {
        p: p.read_bytes() for p in project.rglob("*") if p.is_file() and ".git" not in p.parts
    }
    assert all(line.startswith("kept") for line in init_project(project))
    assert {p: p.read_bytes() for p in before} == before


def test_init_into_a_path_under_a_file_is_bad_input(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["init", str(blocker / "proj")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qpipe init DIR" in err[0] and "cannot be written" in err[0]
    assert blocker.read_text() == "x"


def _project_with_conf(root: Path, hydra: bool) -> Path:
    """A project as `qpipe init` leaves it (conf/, .dvc/config), without git or dvc runs."""
    shutil.copytree(PACKAGED_CONF, root / "conf")
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text(HYDRA if hydra else "[core]\n    autostage = true\n")
    return root


@pytest.mark.parametrize("hydra", [True, False])
def test_compose_overrides_say_that_dvc_exp_run_drops_them(tmp_path, monkeypatch, capsys, hydra):
    # `dvc exp run -S` composes conf/ afresh: overrides given only to `qpipe compose` (the
    # quick start's data settings once were) silently vanish from every experiment
    monkeypatch.chdir(_project_with_conf(tmp_path, hydra))
    assert main(["compose"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert main(["compose", "data.horizons=[1]"]) == 0
    out = capsys.readouterr().out
    assert ("note: `dvc exp run -S` composes conf/ afresh" in out) is hydra
    assert yaml.safe_load(Path("params.yaml").read_text())["data"]["horizons"] == [1]


def test_data_settings_in_conf_config_yaml_reach_params_yaml(tmp_path, monkeypatch):
    # the README's way to point a project at its own panel, for `qpipe compose` and for DVC
    project = _project_with_conf(tmp_path, hydra=True)
    with (project / "conf" / "config.yaml").open("a") as f:
        f.write("\ndata:\n  source: panel\n  path: data/panel.csv\n  target: hicp\n")
    monkeypatch.chdir(project)
    assert main(["compose"]) == 0
    data = yaml.safe_load(Path("params.yaml").read_text())["data"]
    assert (data["source"], data["path"], data["target"]) == ("panel", "data/panel.csv", "hicp")
