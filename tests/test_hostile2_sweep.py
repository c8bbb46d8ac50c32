"""A refused start leaves nothing behind: a `run` whose data is bad removes the output folder it
made, and a multirun job whose data is bad leaves its folder as it found it (none, or an earlier
sweep's record), while its row in the sweep's summary names the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.sweep import launch

STUDY = (
    "data.source=panel",
    "data.target=inflation",
    "runtime.progress_bar=false",
)


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


def test_a_refused_run_removes_the_folders_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "out"
    argv = ["run", *STUDY, f"data.path={tmp_path / 'missing.csv'}", f"runtime.output_dir={out}"]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_refused_sweep_job_leaves_its_folder_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "s"
    earlier = sweep / "1"  # an earlier sweep's job 1: its record and a note of the user's
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / ".hydra" / "config.yaml").write_text("earlier: 1\n")
    (earlier / "notes.txt").write_text("mine\n")
    before = _tree(earlier)
    paths = f"{tmp_path / 'a.csv'},{tmp_path / 'b.csv'}"
    results = launch([*STUDY, f"data.path={paths}", f"hydra.sweep.dir={sweep}"])
    assert [r.status for r in results] == [2, 2]
    assert all("does not exist" in (r.error or "") for r in results)
    assert not (sweep / "0").exists()  # made for job 0 alone: removed again
    assert _tree(earlier) == before  # job 1's earlier record put back, byte for byte
    assert not (sweep / "models").exists()
    assert sorted(p.name for p in sweep.iterdir()) == ["1"]  # (summary.csv: run_multirun's)


def test_a_sweep_job_whose_folder_is_in_use_leaves_the_running_job_s_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.runtime.store.run_lock import RunLock

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "s"
    running = sweep / "0"  # another sweep of the same name, running job 0 now
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "overrides.yaml").write_text("- seed=7\n")
    before = _tree(running)
    with RunLock(running):
        (result,) = launch([*STUDY, f"data.path={tmp_path / 'a.csv'}", f"hydra.sweep.dir={sweep}"])
    assert result.status == 2 and "in use by a running study" in (result.error or "")
    assert _tree(running) == before
