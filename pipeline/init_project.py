"""`qpipe init DIR`: scaffold a user project that runs the pipeline with `dvc repro`.

The project gets an editable copy of the packaged conf/ (it then replaces the packaged one
whole, see `pipeline.config.compose.find_conf_dir`); the stages, `scaffold/dvc.yaml.tmpl`
(the repository's dvc.yaml run by the installed `qpipe`; not named dvc.yaml, or DVC would
collect it as a second pipeline of this repository); params.yaml composed from that conf/; a
.gitignore; and a git + DVC repository with DVC's Hydra composition pointed at conf/.
Whatever already exists is kept, so running it again (or inside an existing repository) only
adds what is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.config.compose import PACKAGED_CONF, write_params
from pipeline.io import check_writable_dir, write_text

SCAFFOLD = Path(__file__).resolve().parent / "scaffold"


def init_project(target: Path) -> list[str]:
    """Create what is missing of a qpipe project in `target`; returns one line per action."""
    check_writable_dir(target, "qpipe init DIR")
    for tool, made in (("git", ".git"), ("dvc", ".dvc")):  # before anything is written
        if not (target / made).exists():
            _executable(tool)
    target.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    if (target / "conf").exists():
        done.append("kept conf/")
    else:
        # copy to a temp name, then rename: an interrupted copy leaves no half conf/ behind
        tmp = target / ".conf.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(PACKAGED_CONF, tmp)
        tmp.rename(target / "conf")
        done.append("wrote conf/ (edit it: it replaces qpipe's packaged defaults)")
    for name, source in (("dvc.yaml", "dvc.yaml.tmpl"), (".gitignore", "gitignore")):
        if (target / name).exists():
            done.append(f"kept {name}")
        else:
            write_text(target / name, (SCAFFOLD / source).read_text(encoding="utf-8"))
            done.append(f"wrote {name}")
    if (target / "params.yaml").exists():
        done.append("kept params.yaml")
    else:
        write_params(target / "params.yaml", (), target / "conf")
        done.append("wrote params.yaml (from conf/; `qpipe compose` writes it again)")
    if not (target / ".git").exists():
        _tool(["git", "init", "--quiet"], target)
        done.append("git init")
    if not (target / ".dvc").exists():
        _tool(["dvc", "init", "--quiet"], target)
        done.append("dvc init")
    # `dvc exp run -S key=value` composes conf/ into params.yaml, as `qpipe compose` does
    dvc_config = target / ".dvc" / "config"
    text = dvc_config.read_text(encoding="utf-8") if dvc_config.exists() else ""
    if "[hydra]" not in text:
        write_text(dvc_config, text.rstrip("\n") + ("\n" if text.strip() else "") + HYDRA)
        done.append("set DVC's [hydra] composition to conf/")
    return done


HYDRA = "[hydra]\n    enabled = true\n    config_dir = conf\n    config_name = config\n"


def _executable(tool: str) -> str:
    executable = shutil.which(tool)
    if executable is None:
        raise ConfigError(
            "qpipe init", f"`{tool}` on PATH (install it, or activate the venv)", "missing"
        )
    return executable


def _tool(command: list[str], cwd: Path) -> None:
    executable = _executable(command[0])
    proc = subprocess.run([executable, *command[1:]], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError("qpipe init", f"`{' '.join(command)}` to succeed in {cwd}", last[0])
