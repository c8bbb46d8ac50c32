"""The command line's grammar: every `qpipe` command and its options (pipeline/cli.py runs them).

Kept apart from cli.py so that the commands' handlers and the parser each stay one job; this
module imports nothing but argparse, so `qpipe --help` stays instant.
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """Options may come before, between or after a command's overrides (`run a=1 --dry-run b=2`).

    argparse takes one run of positionals for `overrides` (nargs="*"); later ones come back
    unrecognized and are appended in order. Anything else unrecognized is still an error.
    """
    parser = command_parser(description)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def command_parser(description: str = "") -> argparse.ArgumentParser:
    """Every command and its options; `args.command` names the one given."""
    parser = argparse.ArgumentParser(
        prog="qpipe",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="scaffold a qpipe project (conf/, dvc.yaml, git, dvc)")
    init.add_argument("dir", help="the project directory (created if absent; nothing is replaced)")

    compose = commands.add_parser("compose", help="write params.yaml from conf/")
    compose.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=seed")
    compose.add_argument("--output", default="params.yaml")

    write_config = commands.add_parser("write-config", help="write a complete default config")
    write_config.add_argument("file", help="target file, or - for stdout")
    write_config.add_argument("overrides", nargs="*")
    write_config.add_argument("--force", action="store_true", help="overwrite an existing file")

    run = commands.add_parser("run", help="run the study in-process")
    run.add_argument("overrides", nargs="*")
    run.add_argument("--dry-run", action="store_true", help="print the plan, train nothing")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="a complete config (as write-config writes it) instead of conf/; overrides apply on top",
    )
    run.add_argument(
        "--max-workers", type=int, metavar="N", help="at most N workers (runtime.max_workers=N)"
    )
    run.add_argument(
        "--write-config",
        metavar="FILE",
        help="write the complete config this run would use to FILE and stop",
    )
    run.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="Hydra multirun over comma-separated overrides",
    )

    stage = commands.add_parser("stage", help="run one DVC stage from params.yaml")
    stage.add_argument("name", choices=["prepare", "probe", "train", "assemble"])
    stage.add_argument("--model", help="a model of the config (models.<name>)")
    stage.add_argument("--params", default="params.yaml")

    check = commands.add_parser("check", help="verify the set-up")
    check.add_argument("overrides", nargs="*")

    results = commands.add_parser("results", help="write docs/RESULTS.md from a finished study")
    results.add_argument(
        "--output-dir", default="studies/seed", help="the study's runtime.output_dir"
    )
    results.add_argument("--out", default="docs/RESULTS.md")
    results.add_argument(
        "--notes", default=None, help="hand-written Markdown appended under its own heading"
    )

    monitor = commands.add_parser("monitor", help="show a run's progress")
    monitor.add_argument("--output-dir", default=".", help="the run's runtime.output_dir")
    monitor.add_argument("--watch", action="store_true", help="refresh live until interrupted")
    monitor.add_argument("--interval", type=float, default=2.0)
    monitor.add_argument(
        "--rows",
        action="store_true",
        help="count forecast rows (model, country, quantile, horizon, origin), not fits",
    )
    monitor.add_argument(
        "--export",
        action="store_true",
        help="write the per-row view to progress/progress.parquet (and errors.parquet), then exit",
    )

    verify = commands.add_parser("verify", help="check every fit-cache checksum now")
    verify.add_argument("--output-dir", default=".", help="the run's runtime.output_dir")
    verify.add_argument("--cache-dir", default=None, help="runtime.model_cache_dir, if set")
    return parser
