"""The commands that make and run a study: init, compose, write-config, run (pipeline.cli
dispatches to them; `stage`, what dvc.yaml calls, stays in cli.py with its own imports).

Module level imports stay light: `qpipe --help` loads no pandas, numpy, Hydra or Dask.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import StudyConfig


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


HANDLERS = {
    "init": _cmd_init,
    "compose": _cmd_compose,
    "write-config": _cmd_write_config,
    "run": _cmd_run,
}
