"""Two runs started at the same moment on one output dir (a user's two terminals, or a
scheduler's retry beside the first try): one holds the dir and finishes, the other refuses
at once with one line and exit 2; the finished dir equals an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import chaos_study
import pytest
from chaos_study import CleanRun, differing, error_lines, start

clean_run = chaos_study.clean_run  # the session's uninterrupted run (a fixture)


@pytest.mark.slow
def test_two_runs_racing_on_one_output_dir_one_refuses_with_exit_2(
    tmp_path: Path, clean_run: CleanRun
) -> None:
    out = tmp_path / "out"
    runs = [start(out), start(out)]
    ended = [
        (proc.pid, proc.returncode, err) for proc in runs for _, err in [proc.communicate(600)]
    ]
    codes = sorted(code for _, code, _ in ended)
    assert codes == [0, 2], ended
    winner = next(pid for pid, code, _ in ended if code == 0)
    err = next(err for _, code, err in ended if code == 2)
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "in use by a running study" in lines[0] and f"pid {winner} " in lines[0], lines[0]
    assert differing(out, clean_run) == []
