"""`--dry-run` plans the config given (issue 21, item 1): on a dir with a finished run, more
series or a new horizon are pending (prepared in memory, the run's panel untouched); options
may come before or after overrides; memory and ETA say where they come from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import tiny_study

from pipeline.cli import main
from pipeline.models.plugins import registry
from pipeline.schema import PANEL_FILE

# rw alone, trained in the driver: a finished run in a few seconds, no cluster
RW_ONLY = (*registry.only("rw"), "runtime.in_process_below_s=1e9")


def _plan(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, list[int]]:
    """Run `argv` (a dry run): {model: [fits, done, failed, pending]} from its table."""
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    rows = re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+\s", text, re.M)
    return {name: [int(v) for v in values] for name, *values in rows}


def test_dry_run_plans_the_config_given_not_the_prepared_panel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    study = tiny_study(*RW_ONLY, f"runtime.output_dir={out}")
    assert main(["run", *study]) == 0
    panel = (out / PANEL_FILE).read_bytes()
    (fits, done, failed, pending) = _plan(capsys, ["run", "--dry-run", *study])["rw"]
    assert fits == done > 0 and pending == failed == 0  # the finished run: all done

    # more series: the new country's fits are pending (an option after the overrides)
    more = _plan(capsys, ["run", *study, "data.synthetic.n_countries=4", "--dry-run"])["rw"]
    assert more[0] == fits * 4 // 3 and more[3] >= fits // 3

    # a new horizon: planned (no traceback), its fits pending; options between overrides
    argv = ["run", *study[:3], "--dry-run", *study[3:], "data.horizons=[1,3]"]
    assert _plan(capsys, argv)["rw"] == [2 * fits, fits, 0, fits]
    assert (out / PANEL_FILE).read_bytes() == panel  # the finished run's panel is kept

    # after a dry run the config is the same again: nothing pending
    assert _plan(capsys, ["run", *study, "--dry-run"])["rw"] == [fits, fits, 0, 0]


def test_dry_run_without_a_probe_says_so_and_invents_no_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study(*RW_ONLY, f"runtime.output_dir={tmp_path / 'fresh'}")
    assert main(["run", "--dry-run", *study]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^memory limit: not measured yet .* a bound, not a need$", text, re.M)
    assert re.search(r"^ETA: unknown for rw: no probe measured", text, re.M)
    assert re.search(r"^rw\s.*unknown$", text, re.M)


def test_unknown_option_after_overrides_is_still_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "seed=1", "--dry-run", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides takes none
        main(["monitor", "seed=1"])
