"""The commands that look at a set-up or a run: check, results, monitor, verify (pipeline.cli
dispatches to them).

Module level imports stay light: `monitor` loads no pandas, numpy, Hydra or Dask.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.runtime.store.run_lock import RunLock


def _cmd_check(args: argparse.Namespace) -> int:
    from pipeline.runtime.ui.check import run_checks

    return run_checks(args.overrides)


def _cmd_results(args: argparse.Namespace) -> int:
    from pipeline.evaluation.results import render_results
    from pipeline.runtime.store.timings import read_timings

    notes = Path(args.notes) if args.notes else None
    if notes is not None and not notes.is_file():
        raise ConfigError("--notes", "an existing Markdown file", str(notes))
    output_dir = Path(args.output_dir)
    from pipeline.runtime.store.progress import db_path, read_table
    from pipeline.schema import META_FILE

    db = db_path(output_dir)  # the per-row view derived on read (else an earlier export)
    needed = [output_dir / META_FILE, db if db.exists() else db.parent / "progress.parquet"]
    absent = [str(p.relative_to(output_dir)) for p in needed if not p.is_file()]
    if absent:  # not a study's output dir: one line, not render_results' FileNotFoundError
        raise ConfigError(
            "--output-dir", f"a finished study's output dir (it lacks {absent})", str(output_dir)
        )
    progress = read_table(db, "progress") if db.exists() else None
    timings = read_timings(output_dir)
    render_results(output_dir, Path(args.out), notes=notes, timings=timings, progress=progress)
    print(f"wrote {args.out}")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pipeline.runtime.ui.monitor import monitor

    if not args.interval > 0:  # 0 or less redrew the table in a busy loop
        raise ConfigError("--interval", "a number of seconds > 0", args.interval)
    if args.export:
        return _export_progress(Path(args.output_dir))
    return monitor(Path(args.output_dir), watch=args.watch, interval=args.interval, rows=args.rows)


def _export_progress(out: Path) -> int:
    """The per-row progress table as files, on demand (train writes only errors.parquet; its
    next run removes this export, which would then be stale)."""
    from pipeline.runtime.store.manifest import tracking_dir
    from pipeline.runtime.store.progress import ProgressStore, db_path

    db = db_path(out)
    if not db.is_file():
        raise ConfigError(
            "--output-dir", "a run's output dir (with progress/progress.sqlite)", str(out)
        )
    with RunLock(out), tracking_dir(out), ProgressStore(db) as store:
        store.export(out)
    print(f"wrote {db.parent / 'progress.parquet'} and {db.parent / 'errors.parquet'}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.runtime.store.verify import verify_cache

    out = Path(args.output_dir)
    cache = Path(args.cache_dir) if args.cache_dir else out / "models"
    # checked before the lock, which would create a missing dir (and fail on a file)
    if not out.is_dir():
        raise ConfigError("--output-dir", "a run's output dir", str(out))
    if not cache.is_dir():
        key = "--cache-dir" if args.cache_dir else "--output-dir"
        raise ConfigError(key, "an existing fit cache folder (a run writes it)", str(cache))
    with RunLock(out):  # a running train writes the cache: wait for no one, exit 2 instead
        lines, damaged = verify_cache(cache)
    print("\n".join(lines))
    return 1 if damaged else 0


HANDLERS = {
    "check": _cmd_check,
    "results": _cmd_results,
    "monitor": _cmd_monitor,
    "verify": _cmd_verify,
}
