"""Reference commits checked out beside this tree, for benchmarks that time both in one run
(imported as a sibling module: run the benchmarks as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def reference_checkouts(references: list[str]) -> Iterator[dict[str, Path]]:
    """{commit: a temporary `git worktree` of it, ..., "new": this tree}; removed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {ref: Path(tmp) / ref for ref in references}
        added = []
        try:
            for ref, path in checkouts.items():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), ref],
                    check=True,
                )
                added.append(path)
            yield {**checkouts, "new": ROOT}
        finally:
            for path in added:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)])


def machine_load() -> str:
    """`uptime`'s line: the load a measurement ran under."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
