"""Failed fits of one model's train and their retries: which fits failed (and why), how often
each was tried, how many workers each task as first made has lost, and the retry tasks queued
(a task lost with its worker in halves, a failed fit alone, a blocked group's in whole blocks)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.runtime.fits.tasks import Task, block_task

if TYPE_CHECKING:
    from pipeline.config import StudyConfig
    from pipeline.runtime.fits.fit_groups import FitGroup
    from pipeline.runtime.store.progress import ProgressStore

log = logging.getLogger("pipeline.train")


class RunView(Protocol):
    """What the retries read of a train run (train_loop.RunState has it): this module is
    imported by that one, not the other way round."""

    config: StudyConfig
    model: str
    run_id: str
    store: ProgressStore
    groups: list[FitGroup]

    @property
    def where(self) -> dict[str, tuple[int, int]]: ...


class Retries:
    """The failure bookkeeping of one train run (keys are the fits' hex content keys)."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}  # key -> error type of its last failure
        self.tries: dict[str, int] = {}
        # worker losses per task as first made (its halves and retries count against it)
        self.losses: dict[str, int] = {}
        self.root: dict[str, str] = {}  # a retry's or half's task id -> the task as first made

    def record(
        self,
        state: RunView,
        failures: list[dict[str, Any]],
        result: dict[str, Any] | None,
        task: Task,
        row: int,
        queue: deque[Task],
        split: bool,
    ) -> None:
        """Record failures; queue retries: a multi-fit task lost for memory is split in halves
        (not an attempt of its fits yet), single fits are retried up to runtime.retries times.
        A task as first made may lose runtime.allowed_failures workers (halves and retries
        included); at the next loss its fits still lost or queued fail without another try."""
        root = self.root.get(task.task_id, task.task_id)
        give_up = False
        if split:  # each loss cost a worker restart: runtime.allowed_failures per root task
            self.losses[root] = self.losses.get(root, 0) + 1
            give_up = self.losses[root] > state.config.runtime.allowed_failures
            if give_up:  # its parts still queued would cost a restart each: they fail too
                for part in [t for t in queue if self.root.get(t.task_id) == root]:
                    queue.remove(part)
                    keys = state.groups[part.group].keys[part.wanted]
                    failures = failures + [{**failures[0], "key": str(k)} for k in keys]
                log.info(
                    "task %s: %d workers lost on its fits (runtime.allowed_failures = %d): "
                    "its %d fits fail without another try",
                    root,
                    self.losses[root],
                    state.config.runtime.allowed_failures,
                    len(failures),
                )
        # a blocked group's fits train in whole blocks only, so such a task is not split
        if split and not give_up and task.index.size > 1 and state.groups[task.group].block is None:
            for n, part in enumerate(np.array_split(task.index, 2)):
                tid = f"{task.task_id}-s{n}"
                self.root[tid] = root
                queue.append(Task(task.model, task.horizon, task.group, part, tid))
            log.info(
                "task %s lost with its worker: retrying its %d fits in halves",
                task.task_id,
                task.index.size,
            )
            return
        fits = np.array([state.where[f["key"]][1] for f in failures], dtype=np.int64)
        state.store.record_failed(
            state.model, state.run_id, task.group, fits, failures, row, result
        )
        retry: list[str] = []
        for f in failures:
            key = f["key"]
            self.failed[key] = f["error_type"]
            self.tries[key] = self.tries.get(key, 0) + 1
            if self.tries[key] <= state.config.runtime.retries and not give_up:
                retry.append(key)
        blocks: dict[tuple[int, int], Task] = {}  # a block's retried fits share one task
        for key in retry:
            gi, i = state.where[key]
            tid = f"{task.task_id}-r{self.tries[key]}-{key[:12]}"
            self.root[tid] = root
            block = state.groups[gi].block
            if block is None:
                queue.append(block_task(state.groups, task, gi, i, tid))
                continue
            mate = blocks.get((gi, int(block[i])))
            blocks[(gi, int(block[i]))] = (
                block_task(state.groups, task, gi, i, tid)
                if mate is None
                else replace(mate, want=np.append(mate.wanted, i))
            )
        queue.extend(blocks.values())
        if retry:
            log.info("retrying %d failed fits of task %s one by one", len(retry), task.task_id)
