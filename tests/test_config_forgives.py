"""Config that forgives (issue 21, item 6): a user model switched off by the documented key
(no `+`), a missing key's message that suggests `+key=value`, and `write-config` writing each
key with its comment from conf/ and no derived keys, read back by `run --config`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config.compose import PACKAGED_CONF, compose_config, compose_dict

USER_MODEL = "+models.mine._target_=examples.mine.Model"


def test_a_user_model_switches_off_without_plus() -> None:
    on = compose_config([USER_MODEL])
    assert "mine" in on.models.enabled()
    off = compose_config([USER_MODEL, "models.mine.enabled=false"])
    assert "mine" in off.models.names() and "mine" not in off.models.enabled()
    # a preset's user model (no `enabled` key), and a built-in, the same way
    preset = compose_config(["experiment=seed_qrf", "models.qrf.enabled=false"])
    assert "qrf" not in preset.models.enabled()
    assert "lqr" not in compose_config(["models.lqr.enabled=false"]).models.enabled()


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_new_key_suggests_plus_and_a_model_typo_names_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = f"runtime.output_dir={tmp_path / 'out'}"
    line = _one_error_line(capsys, ["run", "--dry-run", out, "runtime.no_such_key=3"])
    assert "'runtime.no_such_key'" in line and "+runtime.no_such_key=3" in line
    line = _one_error_line(capsys, ["run", "--dry-run", out, "models.no_such_model.enabled=false"])
    assert "'models.no_such_model'" in line
    assert not (tmp_path / "out").exists()  # refused before any work


def _eol_comments(path: Path) -> dict[str, str]:
    """key -> its end-of-line comment, for the top-level keys of one flat conf/ file."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^(\w+):.*?\s#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def test_write_config_writes_comments_not_derived_keys_and_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    assert main(["write-config", str(first), "models.lqr.p_unused=1"]) == 2  # a typo: exit 2
    assert main(["write-config", str(first)]) == 0
    text = first.read_text()
    runtime = _eol_comments(PACKAGED_CONF / "runtime/default.yaml")
    assert len(runtime) > 10
    for key, comment in runtime.items():  # each key on its own line with its comment
        assert re.search(rf"^  {key}: .*\s# {re.escape(comment)}$", text, re.M), key
    assert re.search(r"^    solver: huberized\s+# huberized \| exact$", text, re.M)  # nested
    # a group's header describes its key
    assert re.search(r"^  # No-change benchmark.*\n  rw:$", text, re.M)
    written = yaml.safe_load(text)
    assert "model_names" not in written  # derived: `run --config` derives it again
    expected = compose_dict([])
    del expected["model_names"]
    assert written == expected
    # read back by run --config, written again with the same comments
    assert main(["run", "--config", str(first), "--write-config", str(second)]) == 0
    assert second.read_text() == text
