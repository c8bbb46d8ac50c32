"""The prepared panel as the stages after prepare read it: `data/prepared/panel.parquet`.

Its own module, apart from `pipeline.stages.prepare`, so that the probe and train stage
processes (and dry-run) read the panel without importing what builds it (the raw loaders,
`pipeline.data.features`, `pipeline.data.windows`): each stage process pays only the read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.schema import PANEL_FILE

if TYPE_CHECKING:  # imported by the read itself
    import pandas as pd


def load_panel(output_dir: Path) -> pd.DataFrame:
    """The panel prepare wrote under `output_dir` (its columns and dtypes as written)."""
    import pandas as pd

    return pd.read_parquet(output_dir / PANEL_FILE)
