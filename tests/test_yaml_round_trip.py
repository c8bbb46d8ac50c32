"""A string that one YAML version reads as another type round-trips through every YAML file we
write and read back (issue 18): params.yaml (`qpipe compose`, read by the stages with YAML 1.2),
a `write-config` file and a run's config.yaml (read by Hydra, YAML 1.1), Hydra's saved config.

`0o17` is a string to YAML 1.1 and the int 15 to YAML 1.2; DVC's writer (OmegaConf.to_yaml,
what `compose` used) left it plain, so every stage failed "expected a string; got 15".
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from omegaconf import OmegaConf
from ruamel.yaml import YAML

from pipeline.config.compose import (
    CONFIG_NAME,
    compose_file,
    find_conf_dir,
    forgiving_overrides,
    load_params,
    params_text,
    write_params,
)
from pipeline.config.plain_scalars import reads_as_other_type, safe_dump

# strings that YAML 1.1 or 1.2 (or both) resolve as a number, bool, null, date or merge key
LOOK_ALIKES = [
    "0o17", "-0o7", "08_", "-_", "0x1F", "1_000", "yes", "no", "on", "off", "y", "N", "~",
    "null", "1e3", "-.5", ".inf", "012", "0b11", "1:20", "2005-01-01", "=", "<<", "true", "",
]  # fmt: skip


def fuzzed(n: int, seed: int = 18) -> list[str]:
    """Seeded strings from the characters YAML's number, bool and null rules look at (no quote,
    backslash, comma, bracket or `$`: each can be a Hydra override's quoted list item)."""
    rng = random.Random(seed)
    alphabet = "0123456789_.:+-eExXoObB~yYnNtTfFlsuaIi=< "
    out = {
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))).strip() for _ in range(n)
    }
    return sorted(s for s in out if s and not s.startswith(("~", "=")))  # Hydra's own syntax


def ruamel(version: tuple[int, int]) -> Callable[[str], object]:
    """ruamel's reader of YAML `version` ((1, 2): load_params's reading, and DVC's)."""

    def read(text: str) -> object:
        loader = YAML(typ="safe", pure=True)
        loader.version = version
        return loader.load(text)

    return read


READERS = {
    "YAML 1.2 (ruamel)": ruamel((1, 2)),
    "YAML 1.1 (ruamel: the spec's y/n)": ruamel((1, 1)),
    "YAML 1.1 (PyYAML)": yaml.safe_load,
    "OmegaConf (Hydra)": lambda text: OmegaConf.to_container(OmegaConf.create(text)),
}


def misread(read: Callable[[str], object], text: str, plain: dict[str, str]) -> bool:
    try:
        return read(text) != plain
    except ValueError:  # ruamel: a plain `-_` resolves as an int it cannot convert
        return True


@pytest.mark.parametrize("reader", list(READERS))
def test_every_string_reads_back_as_written(reader: str) -> None:
    """Block (params.yaml, config.yaml) and flow (write-config's values) style, keys and values."""
    read = READERS[reader]
    corpus = LOOK_ALIKES + fuzzed(2000)
    values = {f"v{i}": s for i, s in enumerate(corpus)}
    keys = {s: i for i, s in enumerate(dict.fromkeys(corpus))}
    for plain in (values, keys):
        for text in (
            params_text(plain),
            safe_dump(plain, sort_keys=False),
            safe_dump(plain, default_flow_style=True, width=math.inf, sort_keys=False),
        ):
            assert read(text) == plain


def test_only_look_alikes_change_from_the_old_writers() -> None:
    """A string no YAML version misreads is written byte for byte as DVC's writer
    (OmegaConf.to_yaml) and yaml.safe_dump write it; the look-alikes they left plain, which
    a YAML version misreads, are quoted."""
    changed = []
    for s in LOOK_ALIKES + fuzzed(2000):
        plain = {"name": s}
        ours = (params_text(plain), safe_dump(plain))
        old = (OmegaConf.to_yaml(OmegaConf.create(plain)), yaml.safe_dump(plain))
        if ours != old:
            assert reads_as_other_type(s), s
            changed.append(s)
            assert any(misread(read, text, plain) for text in old for read in READERS.values()), s
    assert {"0o17", "-0o7", "08_", "-_"} <= set(changed)


def test_params_yaml_is_dvcs_text_where_nothing_is_misread(tmp_path: Path) -> None:
    """For the shipped presets, compose writes what `dvc exp run -S` (DVC's compose_and_dump)
    writes, byte for byte; for `name=0o17` it quotes what DVC's leaves plain."""
    from dvc.utils.hydra import compose_and_dump

    conf = find_conf_dir()
    presets = sorted(p.stem for p in (conf / "experiment").glob("*.yaml"))
    for overrides in ([], *([f"experiment={p}"] for p in presets), ["name=0o17"]):
        ours, dvcs = tmp_path / "ours" / "params.yaml", tmp_path / "params.yaml"
        ours.parent.mkdir(exist_ok=True)
        write_params(ours, overrides)
        compose_and_dump(
            dvcs, str(conf), None, CONFIG_NAME, str(conf.parent), forgiving_overrides(overrides)
        )
        if overrides == ["name=0o17"]:
            assert "name: 0o17\n" in dvcs.read_text() and "name: '0o17'\n" in ours.read_text()
        else:
            assert ours.read_bytes() == dvcs.read_bytes(), overrides


def test_compose_then_load_params_gives_the_composed_strings(tmp_path: Path) -> None:
    """compose -> params.yaml -> load_params: the look-alikes and a fuzzed corpus, as quoted
    Hydra list items of a str list (data.countries), come back as the same strings."""
    params = tmp_path / "params.yaml"
    corpus = LOOK_ALIKES[:-1] + fuzzed(300, seed=7)
    items = ",".join(f"'{s}'" for s in corpus)
    overrides = [f"data.countries=[{items}]", "evaluation.fan_countries=null"]
    composed = write_params(params, overrides)
    assert list(composed.data.countries or ()) == corpus
    assert list(load_params(params).data.countries or ()) == corpus


@pytest.mark.parametrize("value", ["0o17", "'1:20'"])
def test_cli_compose_then_a_stage_reads_the_string(tmp_path: Path, value: str) -> None:
    """The real command line: `compose name=V` exits 0 with V quoted in params.yaml, and a stage
    run from that file (prepare) reads it as the string (it exited 2 on `got 15`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def qpipe(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = qpipe("compose", f"name={value}")
    assert done.returncode == 0, done.stderr
    name = value.strip("'")
    assert f"\nname: '{name}'\n" in (tmp_path / "params.yaml").read_text()
    assert load_params(tmp_path / "params.yaml").name == name
    stage = qpipe("stage", "prepare")
    assert stage.returncode == 0, stage.stderr


def test_write_config_file_reads_back_through_hydra(tmp_path: Path) -> None:
    """`run --write-config FILE name='1e3'` then `--config FILE`: Hydra (YAML 1.1 with 1.2's
    floats) read the plain `1e3` PyYAML wrote as the float 1000.0."""
    from pipeline.cli import main

    path = tmp_path / "study.yaml"
    assert main(["run", "--write-config", str(path), "name='1e3'"]) == 0
    assert compose_file(path)["name"] == "1e3"
