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
from pipeline.runtime.fits.shared_plan import fit_groups, release_plans
from pipeline.runtime.sizing.resources import release_free_memory
from pipeline.schema import month_start
from pipeline.stages.assemble import AssembleResult, assemble

EXPECTED_COLUMNS = ("MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END")


def expected_fits(config: StudyConfig, panel: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (MODEL, COUNTRY, HORIZON, QUANTILE, WINDOW_END) the enabled models must forecast.

    Built from the same fit groups train builds, so a fit the data cannot support (a window
    with a gap, a country whose data ended) is not expected, and every expected one is listed
    as missing by assemble when train did not deliver it. Every column is categorical: a
    million fits are three million rows, held under assemble's read of the shards, so each row
    is ~7 bytes of codes (int8/int16), built from the groups' small arrays without an int64
    column of every row (26 B a row and ~70 B of temporaries before).
    """
    panel = load_panel(config.output_dir) if panel is None else panel
    models = list(config.models.enabled())
    groups = [
        (m, g)
        for m, model in enumerate(models)
        for g in fit_groups(panel, config, adapter_for(config, model))
    ]
    quantiles, q_code = np.unique(
        np.asarray(config.data.quantiles, dtype=np.float64), return_inverse=True
    )
    distinct = [np.unique(g.countries, return_inverse=True) for _, g in groups]
    countries = np.unique(
        np.concatenate([d[0].astype(str) for d in distinct] or [np.array([], str)])
    )
    horizons = np.unique(
        np.concatenate(
            [np.asarray(g.horizons, np.int64) for _, g in groups] or [np.array([], np.int64)]
        )
    )
    months = np.unique(
        np.concatenate(
            [np.asarray(g.origin, np.int64) for _, g in groups] or [np.array([], np.int64)]
        )
    )
    dtypes = [_code_dtype(len(c)) for c in (models, countries, horizons, quantiles, months)]
    cols: dict[str, list[np.ndarray]] = {c: [] for c in EXPECTED_COLUMNS}
    for (m, group), (names, inverse) in zip(groups, distinct, strict=True):
        # one (fit, country) pair per forecast row, fit-major (as fit_groups.expand orders them)
        fr, cj = np.nonzero(group.rows)
        country = np.searchsorted(countries, names.astype(str)).astype(dtypes[1])
        country = country[inverse.reshape(group.countries.shape)[fr, cj]]
        h = np.searchsorted(horizons, np.asarray(group.horizons, np.int64)).astype(dtypes[2])
        hq = h.size * quantiles.size
        month = np.searchsorted(months, np.asarray(group.origin, np.int64)).astype(dtypes[4])
        cols["MODEL"].append(np.full(fr.size * hq, m, dtype=dtypes[0]))
        cols["COUNTRY"].append(np.repeat(country, hq))
        cols["HORIZON"].append(np.tile(np.repeat(h, quantiles.size), fr.size))
        cols["QUANTILE"].append(np.tile(q_code.astype(dtypes[3]), fr.size * h.size))
        cols["WINDOW_END"].append(np.repeat(month[fr], hq))
        del fr, cj, country, month
    categories = {
        "MODEL": models,
        "COUNTRY": countries.tolist(),
        "HORIZON": pd.Index(horizons, dtype=np.int64),
        "QUANTILE": pd.Index(quantiles, dtype=np.float64),
        "WINDOW_END": month_start(months),
    }
    data = {}
    for c, dtype in zip(EXPECTED_COLUMNS, dtypes, strict=True):
        codes = np.concatenate(cols.pop(c)) if groups else np.array([], dtype=dtype)
        data[c] = pd.Categorical.from_codes(codes, categories=categories[c])
    return pd.DataFrame(data)


def _code_dtype(n: int) -> type[np.signedinteger]:
    """The codes' dtype pandas gives a categorical of `n` categories (so from_codes keeps them)."""
    for dtype in (np.int8, np.int16, np.int32):
        if n < np.iinfo(dtype).max:
            return dtype
    return np.int64


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
    # assemble drops after reconciling (a local here would keep its ~20 MB at 1M fits, and the
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
