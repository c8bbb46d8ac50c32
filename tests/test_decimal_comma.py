"""A CSV row with a decimal comma (`2000-01,DE,1,5`) has one field more than the header: the
command line names the file, the line and the likely cause, exits 2 and leaves an earlier
run's output dir as it was.

Before this fix a first data row like that made pandas take TIME as the index, every column
shifted by one, and the run failed with "TIME values ['DE'] are not months"; a later row gave
pandas' "Error tokenizing data" without the cause."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest
from test_bad_input import _args, _expect_bad_input, _good_frame

from pipeline.data.files import CHUNK_ROWS, read_csv_text


def _with_comma_at(frame: pd.DataFrame, row: int) -> str:
    """The frame as CSV text, data row `row` (0-based) written with a decimal comma."""
    lines = frame.to_csv(index=False).splitlines()
    lines[row + 1] = lines[row + 1].replace(".", ",")
    return "\n".join(lines) + "\n"


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """An earlier run's files, as test_bad_input's fixture makes them: left as they were."""
    out = tmp_path / "out"
    (out / "data" / "prepared").mkdir(parents=True)
    (out / "data" / "prepared" / "panel.parquet").write_bytes(b"earlier panel")
    (out / "data" / "prepared" / "meta.json").write_text('{"earlier": 1}\n')
    (out / "metrics.json").write_text('{"earlier": 1}\n')
    return out


@pytest.mark.parametrize("row", [0, 10])  # the first data row (pandas' implicit index), a later one
def test_extra_field_names_file_line_and_fix(
    tmp_path: Path, earlier_run: Path, capsys: pytest.CaptureFixture[str], row: int
) -> None:
    path = tmp_path / "panel.csv"
    path.write_text(_with_comma_at(_good_frame(), row))
    line = _expect_bad_input(
        capsys,
        _args(path, earlier_run),
        earlier_run,
        f"{path} line {row + 2} has 4 fields where the header has 3",
        "a decimal comma",
        "write decimals with a point (1.5)",
    )
    assert "not months" not in line and "tokenizing" not in line


def test_the_line_is_counted_across_chunks_and_compression(tmp_path: Path) -> None:
    n = CHUNK_ROWS + 7  # the bad row in the second chunk pandas reads
    frame = pd.DataFrame({"TIME": ["2000-01"] * n, "COUNTRY": "DE", "v": "1.5"})
    path = tmp_path / "panel.csv.gz"
    path.write_bytes(gzip.compress(_with_comma_at(frame, n - 1).encode()))
    with pytest.raises(Exception, match=f"line {n + 1} has 4 fields where the header has 3"):
        read_csv_text(path)
