"""The prepared panel as the stages after prepare read it: `data/prepared/panel.parquet`.

Its own module, apart from `pipeline.stages.prepare`, so that the probe and train stage
processes (and dry-run) read the panel without importing what builds it (the raw loaders,
`pipeline.data.features`, `pipeline.data.windows`): each stage process pays only the read.
Probe and train read it as Arrow columns (`load_panel_columns`: no pandas, 0.22 CPU-s of each
process); the other readers take the DataFrame (`load_panel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.arrow_columns import to_numpy
from pipeline.schema import PANEL_FILE

if TYPE_CHECKING:  # imported by the read itself
    import pandas as pd


def load_panel(output_dir: Path) -> pd.DataFrame:
    """The panel prepare wrote under `output_dir` (its columns and dtypes as written)."""
    import pandas as pd

    return pd.read_parquet(output_dir / PANEL_FILE)


def load_panel_columns(output_dir: Path) -> PanelColumns:
    """The panel prepare wrote under `output_dir`, read by pyarrow alone (what the fit plan and
    the forecast table read of it: runtime/fits/fit_windows.py takes either form)."""
    import pyarrow.parquet as pq

    # ParquetFile, not pq.read_table: that goes through pyarrow.dataset, which imports pandas
    with pq.ParquetFile(output_dir / PANEL_FILE) as file:
        return PanelColumns(file.read())


class PanelColumns:
    """A prepared panel as Arrow columns, read as numpy arrays with the values `load_panel`'s
    DataFrame holds: numbers as they are (NaN where null), TIME as datetime64, and a string
    column as its distinct values and each row's code (`codes`)."""

    def __init__(self, table: Any) -> None:
        self.table = table  # a pyarrow.Table
        self.columns: list[str] = list(table.column_names)
        self._codes: dict[str, tuple[list[str], np.ndarray]] = {}  # the plan and table reuse them

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def values(self, name: str) -> np.ndarray:
        """Column `name` as numpy (nulls as NaN or NaT, as pandas reads them)."""
        return to_numpy(self.table.column(name))

    def codes(self, name: str) -> tuple[list[str], np.ndarray]:
        """The distinct strings of column `name`, sorted, and each row's index in them (int64);
        a null is an error (prepare writes none)."""
        if name not in self._codes:
            self._codes[name] = self._encode(name)
        return self._codes[name]

    def _encode(self, name: str) -> tuple[list[str], np.ndarray]:
        column = self.table.column(name)
        if column.null_count:
            raise ValueError(f"prepared panel has {column.null_count} rows without a {name}")
        encoded = column.combine_chunks().dictionary_encode()
        found = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
        order = np.argsort(found.astype(str), kind="stable")
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size)
        codes = to_numpy(encoded.indices).astype(np.int64)
        return [str(s) for s in found[order]], rank[codes]
