"""Strings that a YAML reader would read back as another type, and dumpers that quote them.

Our YAML files are read by two dialects: YAML 1.1 (PyYAML: Hydra reading conf/ and `--config`
files, `results.py` reading a run's config.yaml) and YAML 1.2 (ruamel: `load_params` and DVC
reading params.yaml). A string written plain is read as the type its text resolves to, and the
two disagree: `0o17` is a string in 1.1 and the int 15 in 1.2; `yes`, `on`, `1:20` and `y` are
a bool or an int in 1.1 and strings in 1.2; `1e3` is a string to PyYAML and a float to ruamel
and OmegaConf. PyYAML's dumpers quote only what PyYAML's own 1.1 rules would misread, so
`name: 0o17` came back as 15 (issue 18). The dumpers here quote a string whenever either
dialect would read its plain text as anything but that string, so what is read equals what
was written; every other string is written as before, byte for byte.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import yaml

STR_TAG = "tag:yaml.org,2002:str"


@lru_cache(maxsize=1)
def _resolvers() -> tuple[Any, ...]:
    """One resolver per reading: PyYAML's 1.1 rules, ruamel's 1.1 (the spec's, with `y`/`n`)
    and ruamel's 1.2 (the core schema: `0o17`, `1e3`). OmegaConf's loader resolves a subset of
    their union (PyYAML's rules with 1.2's floats, no timestamps)."""
    from ruamel.yaml.nodes import ScalarNode
    from ruamel.yaml.resolver import VersionedResolver

    ruamel = [(VersionedResolver(version=v), ScalarNode) for v in ((1, 1), (1, 2))]
    return ((yaml.resolver.Resolver(), yaml.ScalarNode), *ruamel)


def reads_as_other_type(text: str) -> bool:
    """Whether `text`, written as a plain (unquoted) scalar, would be read by YAML 1.1 or 1.2
    as something other than this string (a number, bool, null, date, merge key...)."""
    return any(
        str(resolver.resolve(node, text, (True, False))) != STR_TAG
        for resolver, node in _resolvers()
    )


@lru_cache(maxsize=8)
def quoting_dumper(base: type[yaml.SafeDumper] | type[yaml.Dumper]) -> type:
    """`base` with strings that `reads_as_other_type` single-quoted; any other string is
    written as `base` writes it."""
    inherited = base.yaml_representers[str]

    def represent_str(dumper: yaml.BaseDumper, data: str) -> yaml.ScalarNode:
        if reads_as_other_type(data):
            return dumper.represent_scalar(STR_TAG, data, style="'")
        return inherited(dumper, data)

    dumper = type(f"Quoting{base.__name__}", (base,), {})
    dumper.add_representer(str, represent_str)
    return dumper


def safe_dump(data: Any, **options: Any) -> str:
    """`yaml.safe_dump(data, **options)` with the strings either YAML version misreads quoted."""
    return yaml.dump(data, Dumper=quoting_dumper(yaml.SafeDumper), **options)
