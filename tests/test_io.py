"""Atomic writes: outputs respect the umask (mkstemp alone would make every file 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.io import write_json, write_npz, write_parquet, write_text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    saved = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"a": 1})
        write_parquet(tmp_path / "c.parquet", pd.DataFrame({"a": [1]}))
        write_npz(tmp_path / "d.npz", {"a": np.arange(3)})
    finally:
        os.umask(saved)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.txt", "b.json", "c.parquet", "d.npz"], mode)


def test_plain_columns_are_written_without_a_dictionary(tmp_path: Path) -> None:
    """column_encodings' `plain` columns have no dictionary page (the others keep theirs),
    and the table reads back the same, whichever way it was written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io import column_encodings, write_parquet_tables

    rng = np.random.default_rng(0)
    table = pa.table({"F": rng.normal(size=1000), "C": pa.array(["AT", "BE"] * 500)})
    plain_f = column_encodings(table.schema.names, plain=["F"])
    write_parquet_tables(tmp_path / "plain.parquet", table.schema, [table], options=plain_f)
    write_parquet_tables(tmp_path / "dict.parquet", table.schema, [table])
    for name, f_dict in (("plain", False), ("dict", True)):
        path = tmp_path / f"{name}.parquet"
        group = pq.ParquetFile(path).metadata.row_group(0)
        assert group.column(0).has_dictionary_page is f_dict
        assert group.column(1).has_dictionary_page
        assert pq.read_table(path).equals(table)
