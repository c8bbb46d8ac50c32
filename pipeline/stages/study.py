"""Glue between a validated StudyConfig and the `assemble` stage: which fits the config asked for."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import StudyConfig
from pipeline.data.prepared import load_panel
from pipeline.evaluation.calibration import CalibrationSettings
from pipeline.evaluation.combination import COMBO
from pipeline.evaluation.derived import DerivedSettings
from pipeline.evaluation.fan_choice import choose_fan_countries
from pipeline.models.plugins.registry import adapter_for, builtin_names
from pipeline.runtime.fits.fit_groups import expand
from pipeline.runtime.fits.shared_plan import fit_groups, release_plans
from pipeline.runtime.sizing.resources import release_free_memory
from pipeline.schema import month_start
from pipeline.stages.assemble import AssembleResult, assemble

EXPECTED_COLUMNS = ("MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END")


def expected_fits(config: StudyConfig, panel: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (MODEL, COUNTRY, HORIZON, QUANTILE, WINDOW_END) the enabled models must forecast.

    Built from the same fit groups train builds, so a fit the data cannot support (a window
    with a gap, a country whose data ended) is not expected, and every expected one is listed
    as missing by assemble when train did not deliver it. MODEL and COUNTRY are categorical
    (a million fits are three million rows: codes, not strings).
    """
    panel = load_panel(config.output_dir) if panel is None else panel
    qs = np.asarray(config.data.quantiles, dtype=np.float64)
    models = list(config.models.enabled())
    cols: dict[str, list[np.ndarray]] = {c: [] for c in EXPECTED_COLUMNS}
    names: list[np.ndarray] = []  # each group's distinct countries; COUNTRY holds codes in them
    for m, model in enumerate(models):
        for group in fit_groups(panel, config, adapter_for(config, model)):
            fi, cj, hi, qi = expand(group, np.arange(len(group)), len(qs))
            distinct, codes = np.unique(group.countries, return_inverse=True)
            cols["MODEL"].append(np.full(fi.size, m, dtype=np.int64))
            cols["COUNTRY"].append(codes.reshape(group.countries.shape)[fi, cj] + _offset(names))
            names.append(distinct.astype(str))
            cols["HORIZON"].append(np.asarray(group.horizons, dtype=np.int64)[hi])
            cols["QUANTILE"].append(qs[qi])
            cols["WINDOW_END"].append(group.origin[fi].astype(np.int64))
    data = {c: np.concatenate(v) if v else np.array([], dtype=np.int64) for c, v in cols.items()}
    countries = np.concatenate(names) if names else np.array([], dtype=str)
    categories, country_code = np.unique(countries, return_inverse=True)
    frame = pd.DataFrame(
        {
            "MODEL": pd.Categorical.from_codes(data["MODEL"], categories=models),
            "COUNTRY": pd.Categorical.from_codes(
                country_code.reshape(-1)[data["COUNTRY"]], categories=categories.tolist()
            ),
            "HORIZON": data["HORIZON"].astype(np.int64),
            "QUANTILE": data["QUANTILE"].astype(np.float64),
        }
    )
    frame["WINDOW_END"] = month_start(data["WINDOW_END"].astype(np.int64))
    return frame


def _offset(names: list[np.ndarray]) -> int:
    return sum(len(n) for n in names)


def fan_countries(config: StudyConfig, present: list[str]) -> tuple[list[str], str]:
    """The countries with fan charts and why (evaluation/fan_choice.py); a chosen country the
    prepared data lacks is a ConfigError (the config checks what it can know before)."""
    return choose_fan_countries(config.evaluation.fan_countries, present)


def chart_order(config: StudyConfig) -> list[str]:
    """The models in the order that fixes their chart colours: the built-ins (registry order),
    combo, then the config's user models; disabled ones keep their place, so switching a model
    off or adding one recolours no other."""
    builtins = list(builtin_names())
    return [*builtins, COMBO, *(m for m in config.model_names if m not in builtins)]


def assemble_study(config: StudyConfig) -> AssembleResult:
    """Run assemble for the config's output dir, checking coverage against the expected fits."""
    panel = load_panel(config.output_dir)
    present = sorted(panel["COUNTRY"].unique().tolist())
    fans, why = fan_countries(config, present)
    evaluation = config.evaluation
    # Held in a list that hands it on: assemble's argument is then its only reference, which
    # assemble drops after reconciling (a local here would keep its 80 MB at 1M fits, and the
    # panel's, under assemble's peak).
    expected = [expected_fits(config, panel)]
    del panel
    release_plans()  # assemble is a run's last user of the fit groups (186 MB at 1M fits)
    release_free_memory()  # the groups' and the expected fits' temporaries, before the read
    return assemble(
        config.output_dir,
        config.data.target,
        benchmark=evaluation.benchmark,
        expected=expected.pop(),
        fan_countries=fans,
        fan_note=why,
        model_order=chart_order(config),
        derived=derived_settings(config),
        window_size=config.rolling_window.size,
        mcs=(evaluation.mcs_size, evaluation.mcs_reps, config.seed),
    )


def derived_settings(config: StudyConfig) -> DerivedSettings:
    """The combo, calibration and scoring settings of the config (evaluation, calibration)."""
    combo, cal = config.evaluation.combo, config.calibration
    return DerivedSettings(
        combo_members=tuple(combo.members) if combo.enabled else None,
        combo_method=combo.method,
        calibration=None
        if cal.method == "none"
        else CalibrationSettings(cal.method, cal.step, cal.window, cal.pool, cal.min_history),
        score_from=pd.Timestamp(config.rolling_window.start_date),
    )
