"""models.ensemble_nn.device reaches the model and its fit key ('auto' resolved on the driver)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from conftest import ROOT, SMALL_STUDY, make_config

from pipeline.data.prepared import load_panel
from pipeline.models.plugins.registry import get_adapter
from pipeline.runtime.execute.worker import run_task
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.tasks import task_payload
from pipeline.stages.prepare import prepare


def config_for(tmp_path, device: str):
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(tmp_path)
    d["rolling_window"]["end_date"] = "2018-02-01"
    d["data"]["horizons"] = [1]
    d["models"]["ensemble_nn"] = {
        "enabled": True,
        "device": device,
        "units_per_layer": [4],
        "epochs": 2,
        "patience": 1,
        "parallel_models": 2,
    }
    return make_config(d)


def test_device_is_in_the_key_and_reaches_the_model(tmp_path, monkeypatch) -> None:
    adapter = get_adapter("ensemble_nn")
    configs = {dev: config_for(tmp_path, dev) for dev in ("auto", "cpu", "cuda")}
    prepare(configs["cpu"], ROOT)
    panel = load_panel(tmp_path)
    keys = {dev: build_groups(panel, c, adapter)[0].keys.tolist() for dev, c in configs.items()}
    assert keys["cpu"] != keys["cuda"]  # a CUDA fit is not a CPU fit's cached result
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert keys["auto"] == keys[auto] and adapter.params(configs["auto"])["device"] == auto

    import pipeline.models.solvers.ensemble_nn as ensemble

    seen = []
    real = ensemble.fit_predict_ensemble_windows

    def spy(*args, **kwargs):
        seen.append(kwargs["device"])
        return real(*args, **{**kwargs, "device": "cpu"})  # no GPU in CI: run on the CPU

    monkeypatch.setattr(ensemble, "fit_predict_ensemble_windows", spy)
    group = build_groups(panel, configs["cuda"], adapter)[0]
    payload = task_payload(
        group,
        np.arange(len(group)),
        params=adapter.params(configs["cuda"]),
        quantiles=configs["cuda"].data.quantiles,
        seed=0,
        extra=adapter.payload,
    )
    out = run_task(payload)
    assert seen == ["cuda"] and not out["failed"]
