"""Command line: `python -m pipeline <command>` (also the `qpipe` console script).

    init DIR                   scaffold a project: conf/, dvc.yaml, params.yaml, git + dvc
    compose [overrides]        write params.yaml from conf/ (what `dvc repro` reads)
    write-config FILE          write a complete default config (FILE '-' prints it)
    run [overrides] [-m]       run prepare -> probe -> train -> assemble in-process;
                               --dry-run prints the plan; -m runs a Hydra multirun sweep;
                               --config FILE (a write-config file; overrides on top),
                               --max-workers N, --write-config FILE (write it and stop)
    stage NAME [--model M]     run one stage from params.yaml (what dvc.yaml calls)
    check                      verify the set-up: dependencies, data, cores, RAM, dashboard
    monitor [--watch] [--rows] show the progress of a run in an output dir
    verify                     check every fit-cache checksum now (a run checks what it uses)

Bad configuration or data, or an output dir that cannot be written, exits with code 2 and a
one-line message; the traceback goes to a log file the line names, not to the terminal. A run
in which some fits failed exits with code 1 (one in which none gave a forecast says so in a line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# light imports only: `qpipe --help` and `monitor` load no pandas, numpy, Hydra, Dask or torch
# (tests/test_lazy_imports.py); each command imports what it needs
from pipeline.cli_parser import parse_args
from pipeline.errors import ConfigError, OutputError, RunFailed
from pipeline.runtime.store.run_lock import (
    OutputDirBusy,
    RunLock,
    forget_held,
    last_held_output_dir,
    remove_temp_files,
)

if TYPE_CHECKING:
    from pipeline.config import StudyConfig

EXIT_FITS_FAILED = 1  # as run_study returns when some fits failed
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
log = logging.getLogger("pipeline")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__ or "")
    from pipeline.runtime.ui.logs import configure_terminal_logging

    forget_held()  # the error log goes to this command's output dir only

    # Dask's INFO chatter (nanny/scheduler lifecycle) goes to the run log only
    configure_terminal_logging()
    try:
        return int(_HANDLERS[args.command](args) or 0)
    except _bad_input_errors() as error:
        return _bad_input(str(error))
    except RunFailed as error:  # no fit gave a forecast: exit 1 (fits failed), not a traceback
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FITS_FAILED
    except (OSError, sqlite3.OperationalError) as error:
        from pipeline.io import write_failure_message

        message = write_failure_message(error, last_held_output_dir())
        if message is None:
            raise
        return _bad_input(message)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """The errors that are exit 2 (evaluated only when one propagates: pipeline.data loads pandas)."""
    from pipeline.data.errors import DataError

    return (ConfigError, DataError, OutputError, OutputDirBusy)


def _bad_input(message: str) -> int:
    """One line on the terminal; the traceback in a log file (named in the line)."""
    log_path = _write_error_log()
    where = f" (details: {log_path})" if log_path else ""
    print(f"error: {message}{where}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _write_error_log() -> Path | None:
    """The traceback, in a new file of mode 0600 that no one else can have prepared.

    Under `{output_dir}/logs/` when this run held its output dir and the run's logs/ folder is
    there (a start refused for bad input leaves the dir as it was), else in the system temp
    dir. mkstemp picks an unpredictable name and opens it with O_CREAT | O_EXCL (a symlink
    planted at any name is never followed).
    """
    import tempfile
    import traceback

    from pipeline.runtime.store.run_lock import last_held_output_dir

    held = last_held_output_dir()
    logs = held / "logs" if held is not None else None
    folder = logs if logs is not None and logs.is_dir() and not logs.is_symlink() else None
    try:
        fd, name = tempfile.mkstemp(prefix="qpipe-error-", suffix=".log", dir=folder)
    except OSError:
        if folder is None:
            return None
        try:  # the output dir filled up or went away meanwhile: the temp dir still works
            fd, name = tempfile.mkstemp(prefix="qpipe-error-", suffix=".log")
        except OSError:
            return None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
    except OSError:
        return None
    return Path(name)


# --- commands -----------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    from pipeline.init_project import init_project

    for line in init_project(Path(args.dir)):
        print(line)
    print(f"next: cd {args.dir} && dvc repro   (edit conf/, then `qpipe compose`)")
    return 0


def _cmd_compose(args: argparse.Namespace) -> int:
    from pipeline.config.compose import write_params

    config = write_params(Path(args.output), args.overrides)
    print(f"wrote {args.output} (experiment {config.name!r})")
    if args.overrides and _dvc_composes_conf(Path.cwd()):
        # DVC's Hydra composition starts from conf/ alone, not from the params.yaml just written
        print(
            "note: `dvc exp run -S` composes conf/ afresh, without these overrides; to keep "
            "them in every experiment, write them into conf/ (conf/config.yaml, or a preset "
            "in conf/experiment/)"
        )
    return 0


def _dvc_composes_conf(project: Path) -> bool:
    """Whether `dvc exp run -S` in `project` composes params.yaml from conf/ ([hydra] in
    .dvc/config, as `qpipe init` sets it)."""
    import configparser

    parser = configparser.ConfigParser()
    try:
        parser.read(project / ".dvc" / "config", encoding="utf-8")
        return parser.getboolean("hydra", "enabled", fallback=False)
    except (configparser.Error, ValueError, UnicodeDecodeError):
        return False


def _cmd_write_config(args: argparse.Namespace) -> int:

    from pipeline.config.compose import compose_dict, config_text

    plain = compose_dict(args.overrides)
    if args.file == "-":
        sys.stdout.write(config_text(plain, args.overrides))
        return 0
    _write_config_file(Path(args.file), config_text(plain, args.overrides), args.force)
    return 0


def _write_config_file(target: Path, text: str, force: bool) -> None:
    """A complete config that `run --config FILE` reads back; an existing file is kept."""
    if target.exists() and not force:
        raise ConfigError(
            "write-config FILE", "a path that does not exist yet (or --force)", str(target)
        )
    from pipeline.io import write_text

    write_text(target, text)
    print(f"wrote {target}")


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.max_workers is not None:  # the seed's flag: the same as runtime.max_workers=N
        if args.max_workers < 1:
            raise ConfigError("--max-workers", "an integer >= 1", args.max_workers)
        overrides.append(f"runtime.max_workers={args.max_workers}")
    if args.multirun:
        if args.config or args.write_config:
            raise ConfigError("run -m", "no --config / --write-config (conf/ only)", "given")
        from pipeline.config.compose import forgiving_overrides
        from pipeline.sweep import run_multirun

        return run_multirun(forgiving_overrides(overrides))
    from pipeline.runtime.sizing.probe_cache import cache_is_empty

    # the first study on this machine: its probe's child imports while the config is made
    # (probe_process, with the child's and the plan's modules, imported only then)
    speculative = not (args.dry_run or args.write_config) and cache_is_empty()
    if speculative:
        from pipeline.stages import probe_process

        probe_process.start_speculative()
    try:
        return _compose_and_run(args, overrides)
    finally:
        if speculative:  # one the run did not take (a bad config, say)
            probe_process.discard_early()


def _compose_and_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from pipeline.config import validate
    from pipeline.config.compose import compose_dict, compose_file

    plain = compose_file(Path(args.config), overrides) if args.config else compose_dict(overrides)
    config = validate(plain)
    if args.write_config:
        from pipeline.config.compose import config_text

        config_file = Path(args.config) if args.config else None
        text = config_text(plain, overrides, config_file)
        _write_config_file(Path(args.write_config), text, force=False)
        return 0
    from pipeline.runner import run_study

    code = run_study(config, dry_run=args.dry_run)
    if not args.dry_run:
        _print_outputs(config)
    return code


def _print_outputs(config: StudyConfig) -> None:
    """The run's last lines: where its report, forecast table and metrics are."""
    from pipeline.schema import FORECASTS_FILE, METRICS_FILE, REPORT_FILE

    for label, name in (
        ("report", REPORT_FILE),
        ("forecasts", FORECASTS_FILE),
        ("metrics", METRICS_FILE),
    ):
        path = config.output_dir / name
        if path.exists():
            print(f"{label + ':':<11}{path}", flush=True)


def _cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.config.compose import load_params

    config = load_params(Path(args.params))
    under_dvc = bool(os.environ.get("DVC_STAGE"))
    if under_dvc:  # run by `dvc repro`: outputs must be where dvc.yaml says
        _check_dvc_paths(config)
    from pipeline.io import check_writable_dir, refuse_system_dir

    refuse_system_dir(config.output_dir)  # before the lock creates anything there
    if args.name == "prepare":  # the first stage: a bad output dir fails before any work
        check_writable_dir(config.output_dir)
    from pipeline.runtime.store.manifest import tracking

    # one run per output dir (dvc stages, too); only files of its own are rewritten or removed
    with RunLock(config.output_dir), tracking(config, by_naming=under_dvc):
        remove_temp_files(config.output_dir)
        return _run_stage(args, config)


def _run_stage(args: argparse.Namespace, config: StudyConfig) -> int:
    if args.name == "prepare":
        from pipeline.stages.prepare import prepare

        prepare(config, Path.cwd())
    elif args.name == "probe":
        from pipeline.runtime.ui.logs import RunLog, new_run_id
        from pipeline.stages.probe import run_probe

        with RunLog(config.output_dir, new_run_id("probe")):  # the probe's details
            run_probe(config)
    elif args.name == "train":
        if args.model not in config.models.names():
            raise ConfigError(
                "stage train --model",
                f"one of the config's models {list(config.models.names())}",
                args.model,
            )
        if args.model not in config.models.enabled():
            _train_disabled(config, args.model)
            return 0
        from pipeline.stages.train import run_train

        summary = run_train(config, args.model)
        return 1 if getattr(summary, "failed", 0) else 0
    elif args.name == "assemble":
        from pipeline.stages.study import assemble_study

        assemble_study(config)
    return 0


def _check_dvc_paths(config: StudyConfig) -> None:
    """dvc.yaml declares every output at the project root: refuse to write them elsewhere."""
    if Path(config.runtime.output_dir) != Path("."):
        raise ConfigError(
            "runtime.output_dir",
            "'.' under dvc repro (use `python -m pipeline run` for other dirs)",
            config.runtime.output_dir,
        )
    if config.model_cache_dir.resolve() != Path("models").resolve():
        raise ConfigError(
            "runtime.model_cache_dir",
            "null under dvc repro (dvc.yaml tracks models/<model>)",
            config.runtime.model_cache_dir,
        )


def _train_disabled(config: StudyConfig, model: str) -> None:
    """DVC runs train@<model> for every model: a disabled one writes an empty table (a no-op).

    Its fit cache folder is created (a DVC output) but never emptied, so re-enabling the model
    reuses every fit it had.
    """
    from pipeline.data.arrow_columns import empty_table
    from pipeline.io import write_parquet_tables
    from pipeline.schema import forecast_arrow_schema
    from pipeline.stages.train import train_path

    (config.model_cache_dir / model).mkdir(parents=True, exist_ok=True)
    schema = forecast_arrow_schema()  # zero rows: the bytes pandas wrote for such a frame
    write_parquet_tables(train_path(config, model), schema, [empty_table(schema)])
    log.info("train %s: disabled (models.%s.enabled=false): wrote an empty table", model, model)


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

    db = db_path(output_dir)  # the per-row view derived on read (else an earlier export)
    progress = read_table(db, "progress") if db.exists() else None
    timings = read_timings(output_dir)
    render_results(output_dir, Path(args.out), notes=notes, timings=timings, progress=progress)
    print(f"wrote {args.out}")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pipeline.runtime.ui.monitor import monitor

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
    with RunLock(out):  # a running train writes the cache: wait for no one, exit 2 instead
        lines, damaged = verify_cache(cache)
    print("\n".join(lines))
    return 1 if damaged else 0


_HANDLERS = {
    "init": _cmd_init,
    "compose": _cmd_compose,
    "write-config": _cmd_write_config,
    "run": _cmd_run,
    "stage": _cmd_stage,
    "check": _cmd_check,
    "results": _cmd_results,
    "monitor": _cmd_monitor,
    "verify": _cmd_verify,
}


if __name__ == "__main__":  # a cluster may start below: keep the guard
    sys.exit(main())
