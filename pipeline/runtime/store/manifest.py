"""What the product wrote in an output dir, so that it never deletes or overwrites anyone else's.

An output dir may hold a user's files (`reports/figure1.png`, `forecasts/my.parquet`), and under
`dvc repro` it is the project root. A file is the product's when an earlier run recorded it in
`logs/qpipe-manifest.json`, or this run wrote it; in a dir that older versions wrote (a
prepared panel but no manifest) also when it carries the product's naming. Only such files are
removed as stale or overwritten; a foreign file where the product would write stops the run
with exit 2 naming it (checked for the predictable names before any work, and at every atomic
write through `pipeline.io.set_write_guard`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import OutputError
from pipeline.io import read_json, set_write_guard, stable_hash, write_json
from pipeline.schema import META_FILE, PANEL_FILE, SAFE_CODE

if TYPE_CHECKING:
    from pipeline.config import StudyConfig

log = logging.getLogger("pipeline")
MANIFEST_FILE = Path("logs/qpipe-manifest.json")
TOP_LEVEL = ("config.yaml", "metrics.json", "metrics_summary.json", "metrics_headline.json",
             "probe.json", "probe_measurements.json")  # fmt: skip
_NAMING = re.compile(
    "|".join(
        (
            "|".join(re.escape(name) for name in TOP_LEVEL),
            re.escape(PANEL_FILE.as_posix()),
            re.escape(META_FILE.as_posix()),
            rf"train/{SAFE_CODE}\.parquet",
            rf"forecasts/(?:{SAFE_CODE}_q[0-9.e+-]+_h[0-9]+|all|missing)\.parquet",
            r"reports/(?:index\.html|pinball_by_horizon\.png|coverage\.png|reliability\.png)",
            rf"reports/fan/{SAFE_CODE}_h[0-9]+\.png",
            r"reports/tables/[a-z0-9_]+\.parquet",
            r"reports/plots/[a-z0-9_]+\.csv",
            r"progress/(?:progress|errors)\.parquet",
            r"logs/(?:timings|charts|stages)\.json",
        )
    )
)
# what pipeline.io.atomic_path leaves when killed: `.{name}.{8 random chars of mkstemp}.tmp`
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def has_product_naming(rel: str) -> bool:
    """Whether `rel` (a path relative to the output dir, with /) is a name the product writes."""
    return _NAMING.fullmatch(rel) is not None


def temp_target(name: str) -> str | None:
    """The file an atomic write's temp file `name` was for, or None if it is not one."""
    match = _TEMP.match(name)
    return match.group("name") if match else None


class OutputFiles:
    """The product's files of one output dir: the manifest of earlier runs plus this run's."""

    def __init__(self, output_dir: str | os.PathLike[str], exclude: Iterable[Path] = ()) -> None:
        self.root = Path(output_dir)
        self.path = self.root / MANIFEST_FILE
        # folders with their own rules (the fit cache, content-addressed): not tracked here
        self.exclude = [Path(os.path.abspath(p)) for p in exclude]
        self.written: set[str] = set()
        self.tracked = False  # True while a run's tracking() guards the dir's writes
        # models training side by side write from several threads: one manifest write at a time
        self._lock = threading.Lock()
        self._announced: set[str] = set()  # recorded ahead of their writes (maybe not done yet)
        self.earlier, self.legacy = self._load()

    def _load(self) -> tuple[set[str], bool]:
        if not self.path.exists():
            # a dir an older version wrote (no manifest yet): its files are known by their names
            return set(), (self.root / META_FILE).is_file()
        try:
            payload = read_json(self.path)
            files = payload["files"]
            if payload["checksum"] != stable_hash(files, 64):
                raise ValueError("checksum mismatch")
            return {str(f) for f in files}, False
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
            log.warning("%s is damaged (%s): rebuilt; files known by their names", self.path, error)
            return set(), True

    def rel(self, path: str | os.PathLike[str]) -> str | None:
        """`path` relative to the output dir (posix), or None outside it or in an excluded
        folder."""
        full = Path(os.path.abspath(path))
        if any(full == e or e in full.parents for e in self.exclude):
            return None
        try:
            return full.relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return None

    def owns(self, path: str | os.PathLike[str]) -> bool:
        rel = self.rel(path)
        if rel is None or rel == MANIFEST_FILE.as_posix():
            return True
        return (
            rel in self.earlier or rel in self.written or (self.legacy and has_product_naming(rel))
        )

    def check_target(self, target: str | os.PathLike[str]) -> None:
        """Raise OutputError if a file the product did not write is at `target`."""
        if os.path.lexists(target) and not self.owns(target):
            raise OutputError(
                f"{target} exists and was not written by this pipeline (not in "
                f"{self.path}); move it out of the output dir, or choose another "
                "runtime.output_dir (a study's own files are never mixed with others')"
            )

    def guard(self, target: Path) -> None:
        """pipeline.io's write hook: refuse a foreign file, record a file of ours."""
        rel = self.rel(target)
        if rel is None or rel == MANIFEST_FILE.as_posix():
            return
        self.check_target(target)
        with self._lock:
            new = rel not in self.written and rel not in self.earlier
            self.written.add(rel)
            # recorded before it is written: a killed run's files stay ours
            if new and self.tracked:
                self.save(ahead=rel)

    def save(self, ahead: str | None = None) -> None:
        """Write the manifest: every file of ours that still exists, and `ahead`, about to be
        (with the others announced so far: another thread may be writing one still)."""
        if ahead is not None:
            self._announced.add(ahead)
        keep = self._announced if ahead is not None else set()
        files = sorted(
            r for r in self.earlier | self.written if r in keep or (self.root / r).exists()
        )
        write_json(self.path, {"files": files, "checksum": stable_hash(files, 64)})


def predictable_targets(output_dir: Path, models: Iterable[str]) -> list[Path]:
    """Outputs whose names the config fixes (the rest are checked as they are written)."""
    names = [*TOP_LEVEL, PANEL_FILE.as_posix(), META_FILE.as_posix(), "forecasts/all.parquet",
             "forecasts/missing.parquet", "reports/index.html", "logs/timings.json"]  # fmt: skip
    names += [f"train/{model}.parquet" for model in models]
    return [Path(output_dir) / name for name in names]


_active: list[OutputFiles] = []


def active(output_dir: str | os.PathLike[str]) -> OutputFiles:
    """The tracker of the run holding `output_dir`, or (a stage called as a library function)
    an untracked view of its manifest, which that caller saves itself."""
    for files in _active:
        if os.path.abspath(files.root) == os.path.abspath(output_dir):
            return files
    return OutputFiles(output_dir)


@contextmanager
def tracking(config: StudyConfig, by_naming: bool = False) -> Iterator[OutputFiles]:
    """Guard and record every atomic write under the config's output dir (hold its RunLock);
    the predictable outputs are checked first, so a foreign file there fails before any work.
    The fit cache (content-addressed, shared between dirs) keeps its own rules. `by_naming`:
    the product's names are its files (under `dvc repro`, where dvc.yaml declares them and a
    fresh clone holds the git-tracked metrics without a manifest)."""
    files = OutputFiles(config.output_dir, exclude=[config.model_cache_dir])
    files.legacy = files.legacy or by_naming
    for target in predictable_targets(config.output_dir, config.models.names()):
        files.check_target(target)
    with _guarding(files):
        yield files


@contextmanager
def tracking_dir(output_dir: str | os.PathLike[str]) -> Iterator[OutputFiles]:
    """tracking for a command that writes into a finished run's dir without its config (the
    on-demand progress export): the same guard and record (hold the dir's RunLock)."""
    with _guarding(OutputFiles(output_dir)) as files:
        yield files


@contextmanager
def _guarding(files: OutputFiles) -> Iterator[OutputFiles]:
    files.tracked = True
    _active.append(files)
    previous = set_write_guard(files.guard)
    try:
        yield files
    finally:
        set_write_guard(previous)
        _active.remove(files)
        if files.written:
            try:
                files.save()
            except OSError as error:  # a full disk: the run's own error says so
                log.warning("could not write %s: %s", files.path, error)
