"""Hydra composition: `conf/` -> a plain dict -> a validated StudyConfig, and params.yaml.

`conf/` is the project's own (./conf, as `qpipe init` writes it), else the packaged one.

This and `cli.py` are the only modules that touch Hydra/OmegaConf objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, StudyConfig, validate
from pipeline.config.structured import first_line

CONFIG_NAME = "config"
PARAMS_FILE = "params.yaml"


# The groups and presets ship inside the package (package data), so an installed copy composes
# from any directory; a project's own conf/ (what `qpipe init` copies) replaces them whole.
PACKAGED_CONF = Path(__file__).resolve().parents[1] / "conf"


def find_conf_dir(start: Path | None = None) -> Path:
    """The project's conf/ (./conf with a config.yaml), else the packaged one."""
    for candidate in ((start or Path.cwd()) / "conf", PACKAGED_CONF):
        if (candidate / f"{CONFIG_NAME}.yaml").exists():
            return candidate
    raise ConfigError(  # only a damaged install gets here
        "conf/",
        "the packaged pipeline/conf/config.yaml (reinstall qpipe) or a project conf/",
        str(PACKAGED_CONF),
    )


def compose_dict(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> dict[str, Any]:
    """Compose conf/ with Hydra overrides into a plain dict (interpolations resolved)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = conf_dir or find_conf_dir()
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base=None):
            cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(
            "overrides",
            "keys and values that exist in conf/ (see `qpipe write-config -`)",
            first_line(error),
        ) from None


def compose_config(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> StudyConfig:
    return validate(compose_dict(overrides, conf_dir))


def compose_file(path: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A complete config file (as `write-config` writes it) with Hydra overrides on top.

    The file is Hydra's primary config (alone in a temp config dir), so `key=value`, `+key=v`
    and `~key` overrides behave as on conf/; group choices (`data=eurostat`) do not exist there.
    """
    import shutil
    import tempfile

    if not path.is_file():
        raise ConfigError(
            "--config", "an existing config file (write one with --write-config FILE)", str(path)
        )
    with tempfile.TemporaryDirectory() as tmp_dir:
        shutil.copyfile(path, Path(tmp_dir) / f"{CONFIG_NAME}.yaml")
        composed = compose_dict(overrides, Path(tmp_dir))
    composed["model_names"] = list(composed.get("models") or {})  # derived, as in conf/
    return composed


def write_params(
    output: Path, overrides: Sequence[str] = (), conf_dir: Path | None = None
) -> StudyConfig:
    """Write params.yaml exactly as `dvc exp run -S` would (DVC's own composer and dumper).

    The composed config is validated first, so an invalid override writes nothing.
    """
    from dvc.utils.hydra import compose_and_dump

    conf_dir = conf_dir or find_conf_dir()
    config = compose_config(overrides, conf_dir)
    import tempfile

    from pipeline.io import write_text

    # DVC picks its writer by the file's suffix (.yaml: OmegaConf.to_yaml): dump to a file of
    # the same name, then move the text into place atomically
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir) / Path(output).name
        compose_and_dump(
            tmp, str(conf_dir.resolve()), None, CONFIG_NAME, str(conf_dir.parent), list(overrides)
        )
        write_text(output, tmp.read_text(encoding="utf-8"))
    return config


def load_params(path: Path = Path(PARAMS_FILE)) -> StudyConfig:
    """Read and validate params.yaml (what DVC stages run with)."""
    if not path.exists():
        raise ConfigError(str(path), "a params file; create it with `qpipe compose`", "missing")
    # YAML 1.2, as DVC (ruamel) writes it: PyYAML's 1.1 rules read `5e-05` as a string
    from ruamel.yaml import YAML

    with open(path, encoding="utf-8") as handle:
        return validate(YAML(typ="safe", pure=True).load(handle) or {})
