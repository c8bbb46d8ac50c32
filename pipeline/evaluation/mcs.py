"""The Model Confidence Set per horizon (pure): each origin's mean pinball loss per model on the
rows every model scored (`origin_losses`), then `arch.bootstrap.MCS` on that matrix
(`model_confidence_set`, never a hand-written MCS); `mcs_table` for assemble."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.grouping import Groups, Keys
from pipeline.evaluation.metrics import pinball_loss, select_rows


def origin_losses(frame: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Per-origin losses of one horizon: mean pinball over countries and quantiles per
    (WINDOW_END, MODEL), on the rows every model scored; a WINDOW_END x MODEL matrix."""
    at = (frame["HORIZON"] == horizon) & frame["ACTUAL"].notna() & frame["FORECAST"].notna()
    columns = ["MODEL", "COUNTRY", "QUANTILE", "WINDOW_END", "ACTUAL", "FORECAST"]
    rows = select_rows(frame, at.to_numpy(), columns)
    y, f = rows["ACTUAL"].to_numpy(np.float64), rows["FORECAST"].to_numpy(np.float64)
    loss = pinball_loss(y, f, rows["QUANTILE"].to_numpy(np.float64))
    key = ["COUNTRY", "QUANTILE", "WINDOW_END"]
    # the (key x MODEL) table of a pivot_table, from integer codes (its cost at scale), where
    # every key is known and no (key, model) has two rows (then pivot_table's mean is needed)
    keys = Keys(rows)
    cells, models = keys.groups(key), keys.groups(["MODEL"])
    flat = None
    if cells.kept is None and models.kept is None and len(rows):
        flat = cells.ids.astype(np.int64) * models.n_groups + models.ids
        if np.bincount(flat).max() > 1:
            flat = None
    if flat is None:
        wide = rows.assign(LOSS=loss).pivot_table(
            index=key, columns="MODEL", values="LOSS", observed=True
        )
        return wide.dropna().groupby(level="WINDOW_END").mean().sort_index()
    wide = np.full((cells.n_groups, models.n_groups), np.nan)
    wide.reshape(-1)[flat] = loss
    complete = ~np.isnan(wide).any(axis=1)  # pivot_table(...).dropna()
    window = keys.codes("WINDOW_END")[0][cells.first[complete]]
    present = np.bincount(window, minlength=1) > 0  # the origins (sorted codes) kept
    origin = (np.cumsum(present) - 1)[window]
    # the means of pandas' groupby (its compensated sum in the pivot's row order)
    by_origin = Groups(ids=origin.astype(np.int32), kept=None, n_groups=int(present.sum()))
    first = np.empty(by_origin.n_groups, np.int64)
    first[origin] = cells.first[complete]
    return pd.DataFrame(
        {j: by_origin.mean(wide[complete, j]) for j in range(models.n_groups)},
        index=pd.Index(rows["WINDOW_END"].iloc[first], name="WINDOW_END"),
    ).set_axis(pd.Index(rows["MODEL"].iloc[models.first], name="MODEL"), axis=1)


def model_confidence_set(
    losses: pd.DataFrame,
    *,
    size: float = 0.1,
    reps: int = 1000,
    block_size: int | None = None,
    method: str = "R",
    seed: int = 0,
) -> pd.DataFrame:
    """`arch.bootstrap.MCS` on a (origins x models) loss matrix: one row per model with its
    MCS p-value and whether it is in the set (`MODEL, P_VALUE, IN_MCS`), in the order of
    `losses`' columns. Stationary bootstrap; `block_size` defaults to arch's own choice.
    Fewer than 2 origins or distinct models: every model is in the set with p-value 1."""
    # arch cannot studentize a zero loss differential: models with identical losses (a _cal
    # variant left unchanged, a one-member combo) share one representative and its result
    representative = {}
    for model in losses.columns:
        twin = next((r for r in dict.fromkeys(representative.values())
                     if np.array_equal(losses[r].to_numpy(), losses[model].to_numpy())), model)  # fmt: skip
        representative[model] = twin
    distinct = list(dict.fromkeys(representative.values()))
    if len(distinct) < 2 or losses.shape[0] < 2:
        return pd.DataFrame({"MODEL": list(losses.columns), "P_VALUE": 1.0, "IN_MCS": True}).astype(
            {"P_VALUE": "float64", "IN_MCS": "bool"}
        )
    from arch.bootstrap import MCS  # here: its import (1.1 CPU-s) only where a set is computed

    mcs = MCS(
        losses[distinct],
        size=size,
        reps=reps,
        block_size=block_size,
        method=method,
        bootstrap="stationary",
        seed=seed,
    )
    mcs.compute()
    pvalues = mcs.pvalues["Pvalue"]
    included = set(mcs.included)
    return pd.DataFrame(
        {
            "MODEL": list(losses.columns),
            "P_VALUE": [float(pvalues[representative[m]]) for m in losses.columns],
            "IN_MCS": [representative[m] in included for m in losses.columns],
        }
    )


def _one_model_set(frame: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, int]:
    """What model_confidence_set(origin_losses(frame, horizon)) and its origins give for a
    frame of one model: that model, in the set with p-value 1, and the origins with a scored
    row whose keys are all known (the rows pivot_table keeps), without the losses' means."""
    columns = ["MODEL", "COUNTRY", "QUANTILE", "WINDOW_END"]
    at = (frame["HORIZON"] == horizon) & frame["ACTUAL"].notna() & frame["FORECAST"].notna()
    at &= frame[columns].notna().all(axis=1)
    rows = select_rows(frame, at.to_numpy(), ["MODEL", "WINDOW_END"])
    table = pd.DataFrame({"MODEL": rows["MODEL"].unique().tolist(), "P_VALUE": 1.0, "IN_MCS": True})
    return table.astype({"P_VALUE": "float64", "IN_MCS": "bool"}), rows["WINDOW_END"].nunique()


def mcs_table(
    frame: pd.DataFrame, *, size: float = 0.1, reps: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The MCS per horizon: `HORIZON, MODEL, N_ORIGINS, P_VALUE, IN_MCS`."""
    parts = []
    one_model = frame["MODEL"].nunique() < 2
    for horizon in sorted(frame["HORIZON"].dropna().unique().tolist()):
        if one_model:  # the set is that model: only its origins are counted (no losses)
            table, n_origins = _one_model_set(frame, int(horizon))
        else:
            losses = origin_losses(frame, int(horizon))
            table, n_origins = None, len(losses)
        if not n_origins:
            continue
        if table is None:
            table = model_confidence_set(losses, size=size, reps=reps, seed=seed)
        table.insert(0, "HORIZON", int(horizon))
        table.insert(2, "N_ORIGINS", n_origins)
        parts.append(table)
    if not parts:
        return pd.DataFrame(columns=["HORIZON", "MODEL", "N_ORIGINS", "P_VALUE", "IN_MCS"])
    return pd.concat(parts, ignore_index=True)
