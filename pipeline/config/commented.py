"""A composed config as YAML with each key's comment from `conf/` (what `write-config` writes).

The comments are read from the conf/ files the config was composed from (config.yaml, the
chosen option of every group, then the chosen experiment preset and the presets it extends),
with a small line reader that fits conf/'s plain style:

- `key: value  # text` gives `key` its end-of-line comment;
- comment lines directly above a key (no blank line between) are written above it;
- a group file's leading comment block (up to the first blank line or key) describes the
  group: it goes above the group's key (`models.rw`, `data`, ...).

The first source with a comment for a key wins (the group's own file before a preset).
Derived keys (`model_names`) are left out: `run --config FILE` derives them again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.plain_scalars import safe_dump

KeyPath = tuple[str, ...]
DERIVED_KEYS = ("model_names",)
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):(.*)$")
_GLOBAL = "# @package _global_"
EOL_COLUMN = 30  # end-of-line comments line up here (or one space after a longer line)


@dataclass
class Comment:
    above: list[str] = field(default_factory=list)
    eol: str | None = None


def _eol_comment(rest: str) -> str | None:
    """The text after an unquoted ` #` in a value (conf/ values are plain or quoted scalars)."""
    quote = None
    for i, char in enumerate(rest):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1 :].strip() or None
    return None


def read_comments(path: Path, package: KeyPath) -> dict[KeyPath, Comment]:
    """Comments of the keys of one conf/ file whose content lands at `package`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if any(line.strip() == _GLOBAL for line in lines):
        package = ()
    out: dict[KeyPath, Comment] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    leading = True  # still in the file's leading comment block
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            if not stripped.startswith("# @package"):
                block.append(stripped[1:].strip())
            continue
        if not stripped:
            if block and leading and package:  # the file's leading block: the group's
                out.setdefault(package, Comment()).above.extend(block)
            leading = leading and not block
            block = []
            continue
        match = _KEY.match(line)
        if match is None:  # a list item or a continuation line
            block = []
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = package + tuple(k for _, k in stack)
        if block and leading:  # the leading block: the group's (a preset's: its own)
            if package:
                out.setdefault(package, Comment()).above.extend(block)
        elif block:
            out.setdefault(dotted, Comment()).above.extend(block)
        block = []
        leading = False
        eol = _eol_comment(rest)
        if eol:
            out.setdefault(dotted, Comment()).eol = eol
    return out


def comment_sources(conf_dir: Path, choices: Mapping[str, Any]) -> list[tuple[Path, KeyPath]]:
    """(file, package) for config.yaml, every chosen group option (then its group's other
    options), then the chosen preset and the presets it lists in its defaults (one level), in
    that order of precedence."""
    sources: list[tuple[Path, KeyPath]] = [(conf_dir / "config.yaml", ())]
    presets: list[Path] = []
    for group, option in choices.items():
        if option is None or group.startswith("hydra"):
            continue
        path = conf_dir / group / f"{option}.yaml"
        if not path.is_file():
            continue
        if group == "experiment":
            presets.append(path)
            extends = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("defaults", [])
            presets += [path.with_name(f"{d}.yaml") for d in extends if isinstance(d, str)]
        else:  # the chosen option first; the group's other options for keys it leaves bare
            others = sorted(p for p in path.parent.glob("*.yaml") if p != path)
            sources += [(p, tuple(group.split("/"))) for p in (path, *others)]
    return sources + [(p, ()) for p in presets if p.is_file()]


def collect_comments(sources: Iterable[tuple[Path, KeyPath]]) -> dict[KeyPath, Comment]:
    merged: dict[KeyPath, Comment] = {}
    for path, package in sources:
        for key, comment in read_comments(path, package).items():
            have = merged.setdefault(key, Comment())
            have.above = have.above or comment.above
            have.eol = have.eol or comment.eol
    return merged


def _flow(value: Any) -> str:
    """One value as one line of YAML (flow style for lists and empty mappings)."""
    text = safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    text = text.strip()
    return text[: -len("...")].strip() if text.endswith("\n...") or text == "..." else text


def dump_commented(
    plain: Mapping[str, Any], comments: Mapping[KeyPath, Comment], header: Sequence[str] = ()
) -> str:
    """`plain` as block-style YAML with `comments`; loads back to `plain` (less DERIVED_KEYS)."""
    lines = [f"# {h}" for h in header] + ([""] if header else [])
    top = {k: v for k, v in plain.items() if k not in DERIVED_KEYS}
    _dump(top, (), 0, comments, lines)
    return "\n".join(lines) + "\n"


def _dump(
    mapping: Mapping[str, Any],
    prefix: KeyPath,
    indent: int,
    comments: Mapping[KeyPath, Comment],
    lines: list[str],
) -> None:
    pad = " " * indent
    for key, value in mapping.items():
        path = (*prefix, str(key))
        comment = comments.get(path, Comment())
        if not indent and isinstance(value, Mapping) and lines and lines[-1]:
            lines.append("")  # a blank line between top-level sections
        lines.extend(f"{pad}# {text}" if text else f"{pad}#" for text in comment.above)
        name = _flow(str(key))
        nested = isinstance(value, Mapping) and value
        text = f"{pad}{name}:" if nested else f"{pad}{name}: {_flow(value)}"
        if comment.eol:
            text = f"{text:<{EOL_COLUMN - 2}}  # {comment.eol}"
        lines.append(text)
        if nested:
            _dump(value, path, indent + 2, comments, lines)
