"""Eurostat bulk TSV parsing, the panel source and the offline download message."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from builders import synthetic_settings

from pipeline.data import DataError
from pipeline.data.eurostat import download, read_eurostat_file, read_eurostat_tsv
from pipeline.data.panel import read_panel_file
from pipeline.data.synthetic import generate_panel, true_quantiles

TSV = (
    "freq,unit,coicop,geo\\TIME_PERIOD\t2024-03 \t2024-02 \t2024-01 \n"
    "M,RCH_A,CP00,AT\t4.1 \t4.3 \t: \n"
    "M,RCH_A,CP00,EL\t3.4 d\t: \t3.2 p\n"
    "M,RCH_A,CP01,AT\t2.0 \t2.2 \t2.5 \n"
    "M,I15,CP00,AT\t130.1 \t129.0 \t128.7 \n"
)


def test_bulk_tsv_to_tidy(tmp_path):
    path = tmp_path / "prc_hicp_manr.tsv"
    path.write_text(TSV)
    tidy = read_eurostat_tsv(path, "prc_hicp_manr").set_index(["COUNTRY", "TIME"]).sort_index()
    assert tidy.loc[("AT", pd.Timestamp("2024-03-01")), "prc_hicp_manr_CP00"] == 4.1
    assert np.isnan(tidy.loc[("AT", pd.Timestamp("2024-01-01")), "prc_hicp_manr_CP00"])
    assert (
        tidy.loc[("EL", pd.Timestamp("2024-03-01")), "prc_hicp_manr_CP00"] == 3.4
    )  # flag 'd' dropped
    assert tidy.loc[("EL", pd.Timestamp("2024-01-01")), "prc_hicp_manr_CP00"] == 3.2
    assert tidy.loc[("AT", pd.Timestamp("2024-02-01")), "prc_hicp_manr_CP01"] == 2.2
    assert tidy.loc[("AT", pd.Timestamp("2024-02-01")), "prc_hicp_manr_CP00_I15"] == 129.0
    gz = tmp_path / "prc_hicp_manr.tsv.gz"
    gz.write_bytes(gzip.compress(TSV.encode()))
    pd.testing.assert_frame_equal(read_eurostat_file(gz), read_eurostat_tsv(path))


def test_bad_tsv_value_is_named(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text(TSV.replace("4.3 ", "four "))
    with pytest.raises(DataError, match="four"):
        read_eurostat_tsv(path)


def test_panel_parquet_and_unknown_suffix(tmp_path):
    frame = pd.DataFrame({"TIME": ["2020-01", "2020-02"], "COUNTRY": ["X", "X"], "v": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "p.parquet")
    assert read_panel_file(tmp_path / "p.parquet")["v"].tolist() == [1.0, 2.0]
    (tmp_path / "p.xlsx").write_text("")
    with pytest.raises(DataError, match="unsupported"):
        read_panel_file(tmp_path / "p.xlsx")


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="offline") as info:
        download("prc_hicp_manr", tmp_path)
    assert "data.path" in str(info.value)
    assert not any(tmp_path.iterdir())


def test_synthetic_is_seeded_and_true_quantiles_are_calibrated():
    settings = synthetic_settings(n_countries=5, start="1997-01-01", end="2024-12-01", seed=3)
    a, b = generate_panel(settings), generate_panel(settings)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.frame["inflation"].between(-10, 20).all() or a.frame["inflation"].isna().any()
    # the one-step true quantiles cover the realized values at their nominal rates
    hits = []
    for t in range(100, 330, 3):
        q = true_quantiles(a, t, 1, [0.1, 0.9], n_draws=4000)
        y = (
            a.frame.pivot(index="TIME", columns="COUNTRY", values="inflation")
            .iloc[t + 1]
            .to_numpy()
        )
        ok = ~np.isnan(y)
        hits.append(np.stack([y[ok] <= q[ok, 0], y[ok] <= q[ok, 1]], axis=1))
    rate = np.concatenate(hits).mean(axis=0)
    assert abs(rate[0] - 0.1) < 0.04 and abs(rate[1] - 0.9) < 0.04
