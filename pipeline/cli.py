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
    results [--out FILE]       write the results page (docs/RESULTS.md) from a finished study
    monitor [--watch] [--rows] show the progress of a run in an output dir
    verify                     check every fit-cache checksum now (a run checks what it uses)

Bad configuration or data, or an output dir that cannot be written, exits with code 2 and a
one-line message; the traceback goes to a log file the line names, not to the terminal. A run
in which some fits failed exits with code 1 (one in which none gave a forecast says so in a line).
Ctrl-C or SIGTERM ends run and stage with one line and exit code 130 or 143; what was written
is kept, and the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

# light imports only: `qpipe --help` and `monitor` load no pandas, numpy, Hydra, Dask or torch
# (tests/test_lazy_imports.py); each command imports what it needs
from pipeline.cli_parser import parse_args
from pipeline.errors import ConfigError, OutputError, RunFailed
from pipeline.runtime.execute.stop import Stopped, ending_now_allowed, on_stop_signals
from pipeline.runtime.store.run_lock import (
    OutputDirBusy,
    RunLock,
    forget_held,
    last_held_output_dir,
    remove_temp_files,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import StudyConfig

EXIT_FITS_FAILED = 1  # as run_study returns when some fits failed
EXIT_INTERRUPTED = 130
log = logging.getLogger("pipeline")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__ or "")
    from pipeline.runtime.ui.logs import configure_terminal_logging

    forget_held()  # the error log goes to this command's output dir only

    # Dask's INFO chatter (nanny/scheduler lifecycle) goes to the run log only
    configure_terminal_logging()
    try:
        with _stop_on_signals(args.command):
            return int(_handler(args.command)(args) or 0)
    except Stopped as stopped:  # SIGINT/SIGTERM outside train (train stops on its own)
        log.warning(
            "interrupted (%s): what was written is kept, nothing half-written; run the same "
            "command again to resume",
            stopped.name,
        )
        return stopped.code
    except _bad_input_errors() as error:
        from pipeline.cli_report import bad_input

        return bad_input(str(error))
    except RunFailed as error:  # no fit gave a forecast: exit 1 (fits failed), not a traceback
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FITS_FAILED
    except (OSError, sqlite3.OperationalError) as error:
        from pipeline.io import write_failure_message

        message = write_failure_message(error, last_held_output_dir())
        if message is None:
            raise
        from pipeline.cli_report import bad_input

        return bad_input(message)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stop_on_signals(command: str) -> AbstractContextManager[object]:
    """For the commands that run stages: SIGINT and SIGTERM raise `Stopped` in the main thread
    (exit 130 or 143 and one line, as train's own stop does) instead of SIGTERM's default
    death (exit -15). Every write is atomic, so unwinding from any point keeps what was
    written; the probe's child and assemble's fork end with the run. Train installs its own
    handlers while it runs (its fits go back to pending, progress is saved). Only the first
    signal raises: a second one while the run unwinds is ignored, not raised inside cleanup."""
    if command not in ("run", "stage"):
        return nullcontext()
    stopping: list[str] = []

    def stop(name: str, code: int) -> None:
        if not stopping:
            stopping.append(name)
            raise Stopped(name, code)

    both = ExitStack()
    both.enter_context(on_stop_signals(stop))
    both.enter_context(ending_now_allowed())  # this process is the command's own
    return both


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    """The command's function. Only `stage` lives here: dvc.yaml's stages depend on this
    module, and the other commands' modules are imported only when they are run."""
    if command == "stage":
        return _cmd_stage
    if command in ("init", "compose", "write-config", "run"):
        from pipeline import cli_study as commands
    else:
        from pipeline import cli_inspect as commands
    return commands.HANDLERS[command]


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """The errors that are exit 2 (evaluated only when one propagates: pipeline.data loads pandas)."""
    from pipeline.data.errors import DataError

    return (ConfigError, DataError, OutputError, OutputDirBusy)


# --- the `stage` command (what dvc.yaml runs) --------------------------------------------------


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


if __name__ == "__main__":  # a cluster may start below: keep the guard
    sys.exit(main())
