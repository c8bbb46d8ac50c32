"""The prepared panel as the stages after prepare read it: `data/prepared/panel.parquet`.

Its own module, apart from `pipeline.stages.prepare`, so that the probe and train stage
processes (and dry-run) read the panel without importing what builds it (the raw loaders,
`pipeline.data.features`, `pipeline.data.windows`): each stage process pays only the read.
Probe and train read it as Arrow columns (`load_panel_columns`: no pandas, 0.22 CPU-s of each
process), train only the columns it uses, and COUNTRY as the file's own dictionary (its codes
then need neither a hash of every row's string nor pyarrow.compute, ~0.06 CPU-s to import); the
other readers take the DataFrame (`load_panel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.arrow_columns import to_numpy
from pipeline.schema import COUNTRY, PANEL_FILE, TIME, month_index

if TYPE_CHECKING:  # imported by the read itself
    import pandas as pd


def load_panel(output_dir: Path) -> pd.DataFrame:
    """The panel prepare wrote under `output_dir` (its columns and dtypes as written)."""
    import pandas as pd

    return pd.read_parquet(output_dir / PANEL_FILE)


def load_panel_columns(output_dir: Path, columns: Sequence[str] | None = None) -> PanelColumns:
    """The panel prepare wrote under `output_dir`, read by pyarrow alone (what the fit plan and
    the forecast table read of it: runtime/fits/fit_windows.py takes either form).

    `columns`: read only these of the file's columns, and COUNTRY and TIME (a name the file
    lacks is left out here: the reader that needs it says which, as for the whole panel).
    COUNTRY is read as the file's dictionary (its type in `table`; its values are the same)."""
    import pyarrow.parquet as pq

    path = output_dir / PANEL_FILE
    # ParquetFile, not pq.read_table: that goes through pyarrow.dataset, which imports pandas
    with pq.ParquetFile(path) as file:  # its footer: which columns it has
        there = file.schema_arrow.names
    if columns is not None:
        wanted = dict.fromkeys([COUNTRY, TIME, *columns])  # in order, once each
        columns = [c for c in wanted if c in there]
    # a panel without COUNTRY is the grid's error to report, as for the whole panel
    dictionary = [COUNTRY] if COUNTRY in there else None
    with pq.ParquetFile(path, read_dictionary=dictionary) as file:
        return PanelColumns(file.read(columns=columns))


class PanelColumns:
    """A prepared panel as Arrow columns, read as numpy arrays with the values `load_panel`'s
    DataFrame holds: numbers as they are (NaN where null), TIME as datetime64, and a string
    column as its distinct values and each row's code (`codes`)."""

    def __init__(self, table: Any) -> None:
        self.table = table  # a pyarrow.Table
        self.columns: list[str] = list(table.column_names)
        self._codes: dict[str, tuple[list[str], np.ndarray]] = {}  # the plan and table reuse them
        self._months: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def values(self, name: str) -> np.ndarray:
        """Column `name` as numpy (nulls as NaN or NaT, as pandas reads them)."""
        return to_numpy(self.table.column(name))

    def months(self) -> np.ndarray:
        """Each row's month index of TIME (int64), made once: the plan's grid and the table's
        actuals both read it (the datetime conversion is ~20 ns a row)."""
        if self._months is None:
            self._months = month_index(self.values(TIME))
        return self._months

    def codes(self, name: str) -> tuple[list[str], np.ndarray]:
        """The distinct strings of column `name`, sorted, and each row's index in them (int64);
        a null is an error (prepare writes none)."""
        if name not in self._codes:
            self._codes[name] = self._encode(name)
        return self._codes[name]

    def _encode(self, name: str) -> tuple[list[str], np.ndarray]:
        import pyarrow as pa

        column = self.table.column(name)
        if column.null_count:
            raise ValueError(f"prepared panel has {column.null_count} rows without a {name}")
        if pa.types.is_dictionary(column.type):  # as read: each chunk's dictionary and indices
            chunks = [(c.dictionary, to_numpy(c.indices)) for c in column.chunks]
        else:  # a plain string column (a table made elsewhere): encoded once, here
            encoded = column.combine_chunks().dictionary_encode()
            chunks = [(encoded.dictionary, to_numpy(encoded.indices))]
        distinct: set[str] = set()
        parts = []
        for dictionary, codes in chunks:
            values = np.array([str(v) for v in dictionary.to_pylist()], dtype=object)
            # a dictionary may hold values no row has (a slice of a larger one): only the
            # rows' values count, as pandas' unique() of the column gives them
            distinct.update(values[np.bincount(codes, minlength=values.size) > 0])
            parts.append((values, codes))
        names = sorted(distinct)
        rank = {v: k for k, v in enumerate(names)}
        coded = [np.array([rank.get(v, -1) for v in vs], np.int64)[codes] for vs, codes in parts]
        if len(coded) == 1:
            return names, coded[0]
        return names, np.concatenate(coded) if coded else np.zeros(0, dtype=np.int64)
