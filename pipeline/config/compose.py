"""Hydra composition: `conf/` -> a plain dict -> a validated StudyConfig, and params.yaml.

`conf/` is the project's own (./conf, as `qpipe init` writes it), else the packaged one.

This and `cli.py` are the only modules that touch Hydra/OmegaConf objects.
"""

from __future__ import annotations

import re
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


# `models.<name>.enabled=false` switches a model off whether or not its entry spells out
# `enabled` (a user model's need not: it defaults to true), so the documented key needs no `+`
_ENABLED = re.compile(r"^models\.[^.=]+\.enabled=")
_NOT_OVERRIDDEN = re.compile(r"Could not override '([^']+)'")
_NO_OPTION = re.compile(r"Could not find '([\w/]+)/([^'/]+)'")


def forgiving_overrides(overrides: Sequence[str]) -> list[str]:
    """`overrides` with `models.<name>.enabled=V` as `++models.<name>.enabled=V` (add or set).

    A name that is no model then fails validation naming `models.<name>`."""
    return [f"++{o}" if _ENABLED.match(o) else o for o in overrides]


def compose_dict(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> dict[str, Any]:
    """Compose conf/ with Hydra overrides into a plain dict (interpolations resolved)."""
    from omegaconf import OmegaConf

    cfg = _compose(overrides, conf_dir or find_conf_dir())
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def chosen_options(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> dict[str, Any]:
    """The option of each group the composition chose ({"data": "synthetic", ...})."""
    from omegaconf import OmegaConf

    cfg = _compose(overrides, conf_dir or find_conf_dir(), hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.runtime.choices)  # type: ignore[return-value]


def _compose(overrides: Sequence[str], conf_dir: Path, hydra_config: bool = False) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = forgiving_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base=None):
            return compose(
                config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=hydra_config
            )
    except UnicodeDecodeError:  # Hydra does not say which file: find it
        raise _not_text(next(_undecodable(conf_dir), conf_dir)) from None
    except (HydraException, OmegaConfBaseException, *_yaml_errors()) as error:
        if isinstance(error, _yaml_errors()):  # a conf/ file that is not YAML: name its line
            raise yaml_error(error) from None
        missing = _NOT_OVERRIDDEN.search(str(error))
        if missing:  # a key conf/ does not have: a typo, or a new key that needs `+`
            key = missing.group(1)
            given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
            raise ConfigError(
                key,
                "a key of the config (`qpipe write-config -` lists them); to add a new key, "
                f"prefix it with +: +{given}",
                "no such key",
            ) from None
        option = _NO_OPTION.search(str(error))
        if option and (conf_dir / option.group(1)).is_dir():  # experiment=nope: list the options
            group = option.group(1)
            known = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
            allowed = f"one of the options in conf/{group}/: {known}"
            raise ConfigError(group, allowed, option[2]) from None
        raise ConfigError(
            "overrides",
            "keys and values that exist in conf/ (see `qpipe write-config -`)",
            first_line(error),
        ) from None


def config_text(
    plain: dict[str, Any], overrides: Sequence[str] = (), config_file: Path | None = None
) -> str:
    """`plain` as YAML with each key's comment from conf/ (the options `overrides` chose) and
    from `config_file` (a `run --config` file), derived keys left out; see config.commented."""
    from pipeline.config.commented import collect_comments, comment_sources, dump_commented

    conf_dir = find_conf_dir()
    # a --config file's overrides are keys of that file only: its own comments come first,
    # then those of conf/'s default options
    sources = comment_sources(conf_dir, chosen_options([] if config_file else overrides))
    if config_file is not None:
        sources.insert(0, (config_file, ()))
    header = [
        "A complete qpipe config (`qpipe write-config`); run it with",
        "`qpipe run --config FILE [key=value ...]`.",
    ]
    return dump_commented(plain, collect_comments(sources), header)


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
    _check_config_file(path)  # Hydra reads a temp copy: its errors would name that copy
    with tempfile.TemporaryDirectory() as tmp_dir:
        shutil.copyfile(path, Path(tmp_dir) / f"{CONFIG_NAME}.yaml")
        composed = compose_dict(overrides, Path(tmp_dir))
    composed["model_names"] = list(composed.get("models") or {})  # derived, as in conf/
    return composed


def write_params(
    output: Path, overrides: Sequence[str] = (), conf_dir: Path | None = None
) -> StudyConfig:
    """Write params.yaml as `dvc exp run -S` does (its Hydra composition, OmegaConf.to_yaml's
    text), but with every string that YAML 1.1 or 1.2 reads as another type quoted: DVC's
    writer leaves `0o17` plain, which the stages (YAML 1.2) read as the int 15.

    The composed config is validated first, so an invalid override writes nothing.
    """
    from pipeline.io import write_text

    plain = compose_dict(overrides, conf_dir or find_conf_dir())
    config = validate(plain)
    write_text(output, params_text(plain))
    return config


def params_text(plain: dict[str, Any]) -> str:
    """`plain` as OmegaConf.to_yaml writes it (what DVC writes params.yaml with), byte for byte,
    except for the strings `plain_scalars.reads_as_other_type` quotes."""
    import yaml

    # OmegaConf's dumper (its public to_yaml takes a config object, not a dumper): its own
    # quoting of bool-like and number-like strings is kept, so other configs' bytes stay DVC's
    from omegaconf._utils import get_omega_conf_dumper

    from pipeline.config.plain_scalars import quoting_dumper

    dumper = quoting_dumper(get_omega_conf_dumper())
    return yaml.dump(
        plain, Dumper=dumper, default_flow_style=False, allow_unicode=True, sort_keys=False
    )


def load_params(path: Path = Path(PARAMS_FILE)) -> StudyConfig:
    """Read and validate params.yaml (what DVC stages run with)."""
    if not path.exists():
        raise ConfigError(str(path), "a params file; create it with `qpipe compose`", "missing")
    # YAML 1.2, as DVC (ruamel) writes it: PyYAML's 1.1 rules read `5e-05` as a string
    from ruamel.yaml import YAML, YAMLError

    try:
        with open(path, encoding="utf-8") as handle:
            plain = YAML(typ="safe", pure=True).load(handle)
    except UnicodeDecodeError:
        raise _not_text(path) from None
    except YAMLError as error:
        raise yaml_error(error, path) from None
    except ValueError as error:  # a plain scalar ruamel resolves as a number it cannot convert
        raise ConfigError(
            str(path), "valid YAML (quote the value that is not a number)", first_line(error)
        ) from None
    if plain is not None and not isinstance(plain, dict):
        raise ConfigError(
            str(path),
            "a mapping of config keys (rewrite it: `qpipe compose`)",
            type(plain).__name__,
        )
    return validate(plain or {})


# --- files that are not YAML: one line naming the file and line, not a parser's traceback ---


def _yaml_errors() -> tuple[type[Exception], ...]:
    """PyYAML's (Hydra, --config) and ruamel's (params.yaml, as DVC writes it) parse errors."""
    import yaml
    from ruamel.yaml import YAMLError

    return (yaml.YAMLError, YAMLError)


def yaml_error(error: Exception, path: Path | None = None) -> ConfigError:
    """A YAML parse error as a ConfigError keyed by the file: its line and the problem."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    name = str(path) if path is not None else str(getattr(mark, "name", "") or "a YAML file")
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or first_line(error)
    return ConfigError(name, "valid YAML (fix the line named)", f"{where}{problem}")


def _not_text(path: Path) -> ConfigError:
    return ConfigError(str(path), "a UTF-8 text YAML file", "binary data or another encoding")


def _undecodable(conf_dir: Path) -> Any:
    """The YAML files under conf_dir that are not UTF-8 (in a stable order)."""
    for candidate in sorted(conf_dir.rglob("*.yaml")):
        try:
            candidate.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield candidate
        except OSError:
            continue


def _check_config_file(path: Path) -> None:
    """A `--config` file must be UTF-8 YAML holding a mapping (what write-config writes)."""
    import yaml

    try:
        plain = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _not_text(path) from None
    except yaml.YAMLError as error:
        raise yaml_error(error, path) from None
    if not isinstance(plain, dict):
        given = "an empty file" if plain is None else f"a {type(plain).__name__}"
        raise ConfigError(
            "--config", "a complete config file as `qpipe write-config FILE` writes it", given
        )
