"""The driver's memory savings change no output (issue 18 item 6): assemble's metric charts,
drawn from the compact metric frame, are the bytes drawn from the whole forecast frame; the
allocators' free memory is released at the stage boundaries without importing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import plots
from pipeline.schema import conform_forecasts
from pipeline.stages.charts import plan_charts

ROOT = Path(__file__).resolve().parents[1]


def _frame() -> pd.DataFrame:
    """Three models (the benchmark not first alphabetically), two countries, NaN actuals and a
    NaN forecast, origins across the COVID window."""
    rng = np.random.default_rng(7)
    origins = pd.date_range("2019-01", periods=40, freq="MS")
    rows = []
    for country in ("SE", "AT"):
        for model in ("zz_user", "ar_qr", "rw"):
            for h in (1, 6):
                times = origins + pd.DateOffset(months=h)
                base = rng.normal(2, 1, origins.size)
                for q in (0.1, 0.5, 0.9):
                    rows.append(pd.DataFrame({
                        "TIME": times, "COUNTRY": country, "TARGET": "infl", "MODEL": model,
                        "QUANTILE": q, "HORIZON": h, "WINDOW_START": origins - pd.DateOffset(months=59),
                        "WINDOW_END": origins, "FORECAST": base + (q - 0.5) * 2,
                        "ACTUAL": np.where(times < pd.Timestamp("2022-01"), base + rng.normal(0, 1, origins.size), np.nan),
                    }))  # fmt: skip
    frame = pd.concat(rows, ignore_index=True)
    frame.loc[5, "FORECAST"] = np.nan
    return conform_forecasts(frame)


def test_metric_charts_are_the_same_bytes_as_from_the_whole_frame(tmp_path: Path) -> None:
    frame = _frame()
    order = ["ar_qr", "rw", "zz_user"]
    plan_charts(tmp_path, frame, "ar_qr", [], order).finish(frame)  # rendered here
    for name, draw in (
        ("pinball_by_horizon.png", plots.pinball_chart),
        ("coverage.png", plots.coverage_chart),
    ):
        whole = tmp_path / f"whole-{name}"
        plots.save_figure(draw(frame, benchmark="ar_qr", order=order), whole)
        assert (tmp_path / "reports" / name).read_bytes() == whole.read_bytes(), name


def test_release_free_memory_imports_nothing_and_keeps_live_arrow_data() -> None:
    code = (
        "import sys\n"
        "from pipeline.runtime.sizing.resources import release_free_memory\n"
        "release_free_memory()\n"
        "assert 'pyarrow' not in sys.modules\n"
        "import pyarrow as pa\n"
        "keep = pa.array(range(1000)); gone = pa.allocate_buffer(64 << 20); del gone\n"
        "release_free_memory()\n"
        "assert keep.to_pylist() == list(range(1000))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_assemble_holds_the_expected_fits_only_until_they_are_reconciled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million fits' expected frame (80 MB) must not stay alive under assemble's later,
    larger steps: after reconcile nothing references it any more."""
    import gc
    import weakref

    from conftest import prepared_rw_study

    import pipeline.stages.assemble as assemble_stage
    import pipeline.stages.study as study
    from pipeline.runtime.sizing.plan import ModelPlan, Plan
    from pipeline.stages.train import run_train

    config = prepared_rw_study(tmp_path)
    plan = Plan(2, 2048, models={"rw": ModelPlan(0, 8, 0, seconds_per_fit=0.001)})
    run_train(config, "rw", plan)
    made: list[weakref.ref] = []
    alive_after_reconcile: list[bool] = []
    real_expected, real_label = study.expected_fits, assemble_stage.label_failed

    def expected_fits(*args: Any, **kwargs: Any) -> pd.DataFrame:
        frame = real_expected(*args, **kwargs)
        made.append(weakref.ref(frame))
        return frame

    def label_failed(*args: Any, **kwargs: Any) -> pd.DataFrame:  # assemble's next step
        gc.collect()
        alive_after_reconcile.append(made[0]() is not None)
        return real_label(*args, **kwargs)

    monkeypatch.setattr(study, "expected_fits", expected_fits)
    monkeypatch.setattr(assemble_stage, "label_failed", label_failed)
    result = study.assemble_study(config)
    assert result.n_rows > 0 and len(made) == 1
    assert alive_after_reconcile == [False]
