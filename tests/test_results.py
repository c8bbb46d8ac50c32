"""A reduced seed study on the real data, end to end in-process, and the RESULTS.md generator on it."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config.compose import compose_config
from pipeline.evaluation.results import render_results
from pipeline.runner import run_study
from pipeline.runtime.store.progress import db_path, read_table
from pipeline.runtime.store.timings import read_timings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_seed_study_and_results_page(tmp_path, monkeypatch):
    """`make study`'s own data path (experiment=seed's, no data.path override): the data
    file shipped in the repo, so this passes in a clone with nothing beside it."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "study"
    config = compose_config(
        [
            "experiment=seed",
            "data.countries=[DE,FR,IT,UK]",
            "data.horizons=[1,3]",
            "rolling_window.start_date=2020-06-01",
            "rolling_window.end_date=2021-05-01",
            "models.lqr.rff_features=100",
            "models.ensemble_nn.epochs=30",
            "models.ensemble_nn.parallel_models=3",
            "models.ensemble_nn.units_per_layer=[8,8]",
            f"runtime.output_dir={out}",
            "runtime.progress_bar=false",
            "runtime.dashboard_port=0",
        ]
    )
    assert run_study(config) == 0
    doc = tmp_path / "docs" / "RESULTS.md"
    progress = read_table(db_path(out), "progress")  # the store's per-row view, as the CLI reads it
    text = render_results(
        out, doc, fan_countries=("DE",), timings=read_timings(out), progress=progress
    )
    assert doc.read_text() == text
    # coverage: the UK's data ends in 2020-11, so it has fewer fits than DE; nothing failed
    assert "4 countries kept: DE, FR, IT, UK" in text
    covered = text.split("## Countries and fits covered")[1].split("## Wall time")[0]
    rows = dict(re.findall(r"^\| (ar_qr|lqr|ensemble_nn) \| ([\d,]+) \|", covered, re.M))
    assert rows["ar_qr"] == rows["lqr"] and int(rows["ensemble_nn"]) == 12
    assert not (out / "progress/progress.parquet").exists()  # train writes no per-row export
    assert (progress["status"] == "done").all()
    uk = progress[(progress["model"] == "ar_qr") & (progress["country"] == "UK")]
    de = progress[(progress["model"] == "ar_qr") & (progress["country"] == "DE")]
    assert 0 < len(uk) < len(de)
    # every stage timed (by the one run: its start in the last column), memory compared with
    # the probe
    for stage in ("prepare", "probe", "train@ar_qr", "train@lqr", "train@ensemble_nn", "assemble"):
        run = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        assert re.search(rf"^\| {re.escape(stage)} \| [\d.]+ \| ok \| {run} \|$", text, re.M), stage
    assert "peak / estimate" in text
    # the metric tables are the assembled ones, not made up
    pinball = pd.read_parquet(out / "reports/tables/pinball.parquet")
    cell = pinball[
        (pinball.PERIOD == "all")
        & (pinball.MODEL == "lqr")
        & (pinball.HORIZON == 3)
        & (pinball.QUANTILE == 0.5)
    ]
    assert "| lqr | 3 | " in text and f"{cell.PINBALL.item():.3f}" in text
    assert "### Without the COVID months" in text and "Diebold-Mariano" in text
    # fan charts are copied beside the page and referenced relatively
    images = re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", text)
    assert images and all((doc.parent / image).exists() for image in images)
    assert "## Reading" in text and "relative pinball" in text
    # the authors' reading goes after the generated one, under its own heading
    notes = tmp_path / "notes.md"
    notes.write_text("Hand-written reading.\n")
    with_notes = render_results(
        out, doc, fan_countries=("DE",), notes=notes, timings=read_timings(out), progress=progress
    )
    assert with_notes.startswith(text) and with_notes.index("## Reading") < with_notes.index(
        "## Notes (hand-written, from `notes.md`)"
    )
    assert with_notes.endswith("\n\nHand-written reading.\n")
