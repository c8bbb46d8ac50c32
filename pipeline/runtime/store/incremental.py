"""Incremental `python -m pipeline run`: a stage whose inputs did not change is skipped.

As `dvc repro` does, but in-process: each stage's record in `{output_dir}/logs/stages.json`
holds a digest of its inputs (the params it reads, the files it reads, the package's code) and
the state of the outputs it wrote. A stage is skipped when both still match: same inputs and
every output present and untouched since. Files are compared by (size, mtime in ns), the same
test `dvc status` makes before it rehashes; a file rewritten in place (a damaged cache shard, an
edited table) changes its mtime, so its stage runs again and checks everything it reads.

The record lives under logs/ (never a DVC output). Losing it only costs one full run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.io import stable_hash, write_text

STAMPS_FILE = Path("logs/stages.json")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the package's source (every .py under pipeline/): new code reruns every stage."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def file_states(paths: Iterable[Path]) -> list[list[Any]]:
    """[path, size, mtime_ns] of each file (a folder: of every file below it, sorted); a
    missing path is listed with size -1, so its appearance changes the state too."""
    out: list[list[Any]] = []
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            try:
                st = os.stat(f)
                out.append([str(f), st.st_size, st.st_mtime_ns])
            except FileNotFoundError:
                out.append([str(f), -1, 0])
    return out


class StageRecords:
    """The stage records of one output dir (read once; each `record` rewrites the file)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / STAMPS_FILE
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(self.data, dict):
                self.data = {}
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def digest(params: Mapping[str, Any], inputs: Iterable[Path]) -> str:
        return stable_hash(
            {"params": dict(params), "inputs": file_states(inputs), "code": code_digest()},
            length=64,
        )

    def unchanged(self, stage: str, params: Mapping[str, Any], inputs: Iterable[Path]) -> bool:
        """True when the stage ran with these inputs and its outputs are as it left them."""
        rec = self.data.get(stage)
        if not isinstance(rec, dict) or rec.get("inputs") != self.digest(params, inputs):
            return False
        outputs = rec.get("outputs") or []
        return bool(outputs) and file_states(Path(p) for p, _, _ in outputs) == outputs

    def record(
        self,
        stage: str,
        params: Mapping[str, Any],
        inputs: Iterable[Path],
        outputs: Iterable[Path],
        **extra: Any,
    ) -> None:
        """Record a finished stage (after its outputs are written)."""
        self.data[stage] = {
            "inputs": self.digest(params, inputs),
            "outputs": file_states(outputs),
            **extra,
        }
        write_text(self.path, json.dumps(self.data, sort_keys=True) + "\n")

    def forget(self, stage: str) -> None:
        """Drop a stage's record (it is running again: a kill must not leave the old one)."""
        if self.data.pop(stage, None) is not None:
            write_text(self.path, json.dumps(self.data, sort_keys=True) + "\n")

    def get(self, stage: str) -> dict[str, Any]:
        rec = self.data.get(stage)
        return rec if isinstance(rec, dict) else {}
