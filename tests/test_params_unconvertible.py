"""A params.yaml value that YAML 1.2 (ruamel, as DVC writes the file) resolves as a number but
cannot convert (a plain `-_` or `._`) is bad input: exit 2 and one line naming the file, not
ruamel's ValueError traceback; the file is left as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.config import ConfigError
from pipeline.config.compose import load_params


@pytest.mark.parametrize("value", ["-_", "._", "+_"])
def test_an_unconvertible_number_in_params_yaml_is_one_line(tmp_path: Path, value: str) -> None:
    params = tmp_path / "params.yaml"
    text = f"data:\n  target: {value}\n"
    params.write_text(text)
    with pytest.raises(ConfigError, match=r"params\.yaml.*quote the value"):
        load_params(params)
    shutil.copytree(ROOT / "pipeline" / "conf", tmp_path / "conf")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stage = subprocess.run(
        [sys.executable, "-m", "pipeline", "stage", "prepare"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stage.returncode == 2, stage.stderr
    assert "Traceback" not in stage.stderr, stage.stderr
    (line,) = [x for x in stage.stderr.splitlines() if x.startswith("error:")]
    assert "params.yaml" in line and "quote the value" in line, line
    assert params.read_text() == text
