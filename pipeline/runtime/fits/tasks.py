"""Tasks: batches of fits of one fit group, what one worker call solves in one batched call
(pure: numpy only). Fits per task are sized from the measured time per fit; a model whose fits
train in fixed blocks (ensemble_nn) always gets whole blocks (see pipeline.runtime.fits.fit_groups).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.runtime.fits.fit_groups import FitGroup
from pipeline.runtime.fits.fit_windows import CountryWindows, positions


@dataclass(frozen=True)
class Task:
    """A batch of fits of one group: what one worker call solves in one batched call."""

    model: str
    horizon: int
    group: int  # index of the FitGroup in its list
    index: np.ndarray  # positions in the group: what the worker trains
    task_id: str  # deterministic name (stable across reruns of the same batch)
    # the positions (a subset of index) whose results this run wants; None: all of index.
    # A block's fits always train together, so a retry or a resume of part of a block
    # trains the whole block and keeps the part it wants (one key, one result).
    want: np.ndarray | None = None

    @property
    def wanted(self) -> np.ndarray:
        return self.index if self.want is None else self.want


def make_tasks(
    groups: Sequence[FitGroup], todo: Sequence[np.ndarray], fits_per_task: int
) -> list[Task]:
    """Chunk the fits still to do (`todo[g]`: positions in group g) into tasks.

    Chunks are contiguous in (horizon, country, origin) order and sized evenly, so a task
    never holds fewer than half of `fits_per_task` unless its group is that small. A group
    with batch blocks gets one task per block instead: the whole block trains, the fits
    still to do are its `want`.
    """
    if fits_per_task < 1:
        raise ValueError(f"fits_per_task must be >= 1; got {fits_per_task}")
    tasks: list[Task] = []
    for g, (group, idx) in enumerate(zip(groups, todo, strict=True)):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            continue
        raw = group.key_bytes()
        if group.block is not None:
            blocks = np.unique(group.block[idx])
            parts = [idx[group.block[idx] == b] for b in blocks]
            full = [np.nonzero(group.block == b)[0] for b in blocks]
        else:
            parts = np.array_split(idx, math.ceil(idx.size / fits_per_task))
            full = parts
        for part, index in zip(parts, full, strict=True):
            # named by its fits' raw keys (one hash call per task, not a JSON list of keys)
            head = f"{group.model}|{group.horizon}|".encode()
            tid = hashlib.sha256(head + raw[part].tobytes()).hexdigest()[:16]
            want = None if np.array_equal(part, index) else part
            tasks.append(
                Task(
                    group.model,
                    group.horizon,
                    g,
                    index,
                    f"{group.model}-h{group.horizon}-{tid}",
                    want,
                )
            )
    return tasks


def block_task(groups: Sequence[FitGroup], task: Task, g: int, i: int, task_id: str) -> Task:
    """A retry of fit `i` of group `g`: alone, or (a blocked group) in its whole block."""
    group = groups[g]
    if group.block is None:
        return Task(task.model, task.horizon, g, np.array([i]), task_id)
    return Task(
        task.model, task.horizon, g, np.nonzero(group.block == group.block[i])[0], task_id,
        np.array([i]),
    )  # fmt: skip


def task_payload(
    group: FitGroup,
    index: np.ndarray,
    *,
    params: Mapping[str, Any],
    quantiles: Sequence[float],
    seed: int,
    extra: Mapping[str, Any] | None = None,
    compact: bool = False,
    countries: CountryText | None = None,
    keys: bool = True,
) -> dict[str, Any]:
    """Plain data a worker needs for one task (arrays sliced to the task's fits).

    `extra`: the adapter's own payload entries (a user model's import path and contract).
    `compact`: per-country fits send, instead of `data`, `windows`: the grid rows and months
    their windows read (CountryWindows.part), from which `with_data` builds the same `data`
    on the worker; a task's windows overlap, so this is about 100x smaller on the wire.
    `countries`: the group's CountryText (the task loop's, made once per group); None converts
    the fits' own (the probe's and the model check's few payloads).
    `keys`: send the fits' content keys (32 bytes per fit). Train's tasks send none: their
    worker encodes the cache shard without them and the driver binds the keys it knows to
    its checksums (worker.shard_bytes, FitCache.write_encoded).
    """
    windows = group.data if compact and isinstance(group.data, CountryWindows) else None
    at = positions(index)  # a task's run of fits: its arrays sent as views of the group's
    payload = {
        **dict(extra or {}),
        "model": group.model,
        "horizon": int(group.horizon),
        "horizons": [int(h) for h in group.horizons],
        "params": dict(params),
        "quantiles": [float(q) for q in quantiles],
        "seed": int(seed),
        # the fits' content keys as raw digests (one buffer on the wire, not a list of str)
        **({"keys": group.key_bytes()[at]} if keys else {}),
        "countries": group.countries[at].astype(str) if countries is None else countries(at),
        "rows": group.rows[at],
        # month index (year * 12 + month - 1)
        "origins": np.asarray(group.origin[at], dtype=np.int64),
        **({"data": group.take(index)} if windows is None else {"windows": windows.part(index)}),
        # each fit's batch slot (see FitGroup.slot); a plain list, so the payload stays JSON + arrays
        "slots": None if group.slot is None else [int(s) for s in group.slot[at]],
        # fits trained in fixed blocks (ensemble_nn): a failing batch is not bisected, since a
        # fit trained in half its block would not give its key's bits
        "blocked": group.block is not None,
    }
    return payload


class CountryText:
    """A group's forecast-row countries of some fits as str: `group.countries[index]
    .astype(str)` (the same dtype, as wide as those fits' longest name) taken from the group's
    few distinct names, made once, instead of a str made from each fit's object (5 ms per
    65,536-fit task, 0.07 CPU-s of train's driver at rw 1M)."""

    def __init__(self, group: FitGroup) -> None:
        names, codes = group.country_codes()
        self.names = np.asarray(names, dtype=str)
        self.width = np.char.str_len(self.names) if self.names.size else np.zeros(0, np.int64)
        self.codes = codes.reshape(len(group), -1)

    def __call__(self, index: np.ndarray | slice) -> np.ndarray:
        codes = self.codes[index]
        wide = int(self.width[codes].max()) if codes.size else 0
        return self.names[codes].astype(f"U{max(wide, 1)}")


def with_data(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with `data` built from a compact payload's `windows` (see task_payload);
    a payload that has `data` is returned as it is."""
    if "windows" not in payload:
        return payload
    out = {k: v for k, v in payload.items() if k != "windows"}
    windows = CountryWindows.from_part(payload["windows"])
    out["data"] = windows.take(np.arange(windows.country.size))
    return out


def choose_fits_per_task(
    seconds_per_fit: float,
    task_seconds: float,
    n_fits: int,
    n_workers: int,
    min_tasks_per_worker: int = 4,
) -> int:
    """Fits per task: about `task_seconds` of work, but at least a few tasks per worker."""
    by_time = max(1, int(task_seconds / max(seconds_per_fit, 1e-9)))
    by_balance = max(1, math.ceil(n_fits / max(1, n_workers * min_tasks_per_worker)))
    return int(min(by_time, by_balance))


def batched_fits_per_task(fits_per_task: int, n_fits: int, n_workers: int, batch_fits: int) -> int:
    """Raise `fits_per_task` towards `batch_fits` for models whose batched call amortizes.

    A batched network (ensemble_nn) costs much less per fit when many fits share one call,
    so time-based sizing (which would give one fit per task) is overridden: the fits are cut
    into a multiple of `n_workers` tasks of at most `batch_fits` (the size the probe measured),
    so every worker gets the same number of equal tasks.
    """
    if batch_fits < 1:
        raise ValueError(f"batch_fits must be >= 1; got {batch_fits}")
    if batch_fits <= fits_per_task or n_fits <= 0:
        return fits_per_task
    workers = max(1, n_workers)
    n_tasks = workers * math.ceil(n_fits / (workers * batch_fits))
    return max(fits_per_task, math.ceil(n_fits / n_tasks))
