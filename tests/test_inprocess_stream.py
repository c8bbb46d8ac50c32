"""The driver's child runs the next task while the driver handles a result (issue 18): tasks
are sent ahead, and a child killed on a task loses neither the tasks queued behind it nor
mixes their results into the next stream. A real spawned child; task functions live here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_runtime import wait_for

from pipeline.runtime.execute.child import close_shared_child
from pipeline.runtime.execute.inprocess import InProcessStream


def marked_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Leave `started-<i>` in payload["dir"], then return i (or sleep an hour when asked)."""
    Path(payload["dir"], f"started-{payload['i']}").touch()
    if payload.get("hang"):
        time.sleep(3600)
    if payload.get("die"):
        os._exit(3)
    return {"i": payload["i"]}


@pytest.fixture(autouse=True)
def fresh_child() -> Iterator[None]:
    close_shared_child()
    yield
    close_shared_child()


def submit(
    stream: InProcessStream, tmp_path: Path, *tasks: int, hang: int = -1, die: int = -1
) -> None:
    for i in tasks:
        stream.submit(f"t{i}", {"dir": str(tmp_path), "i": i, "hang": i == hang, "die": i == die})


def test_the_child_starts_the_next_task_before_the_driver_asks_for_it(tmp_path: Path) -> None:
    stream = InProcessStream(marked_task, timeout_s=60.0)
    submit(stream, tmp_path, 0, 1, 2)
    seen = []
    for name, result, error in stream:
        assert error is None and result is not None and name == f"t{result['i']}"
        seen.append(result["i"])
        if result["i"] < 2:  # the driver handles this result: the next task is already on
            nxt = tmp_path / f"started-{result['i'] + 1}"
            wait_for(nxt.exists, 60, f"{nxt.name} before the driver asked for it")
    assert seen == [0, 1, 2] and stream.in_flight == 0
    stream.close()


def test_a_task_killed_in_the_child_loses_none_queued_behind_it(tmp_path: Path) -> None:
    # (a timeout kills the same way: test_task_limits' hanging fit in the driver's child)
    stream = InProcessStream(marked_task, timeout_s=60.0)
    submit(stream, tmp_path, 0, 1, 2, die=0)
    out = {name: (result, error) for name, result, error in stream}
    assert out["t0"][0] is None and out["t0"][1]["error_type"] == "worker-lost"
    assert out["t1"] == ({"i": 1}, None) and out["t2"] == ({"i": 2}, None)  # a fresh child


def test_an_abandoned_stream_s_results_do_not_reach_the_next_one(tmp_path: Path) -> None:
    first = InProcessStream(marked_task, timeout_s=60.0)
    submit(first, tmp_path, 0, 1, 2)
    name, result, _ = next(iter(first))  # t1 is in the child now, t2 pending
    assert (name, result) == ("t0", {"i": 0})
    first.close()
    second = InProcessStream(marked_task, timeout_s=60.0)
    submit(second, tmp_path, 9)
    assert [(n, r) for n, r, _ in second] == [("t9", {"i": 9})]
    second.close()


def test_a_child_that_dies_on_the_task_sent_ahead_fails_that_task_only(tmp_path: Path) -> None:
    """t1 kills the child while the driver still holds t0's result: t1 is lost, and t2 (sent
    next) must go to a fresh child, not be read back as t1's result."""
    stream = InProcessStream(marked_task, timeout_s=60.0)
    submit(stream, tmp_path, 0, 1, 2, die=1)
    out = {}
    for name, result, error in stream:
        out[name] = (result, error)
        if name == "t0":  # the child runs t1 now: let it die before the stream goes on
            wait_for(lambda: not stream.child.proc.is_alive(), 60, "the child to die on t1")
    assert out["t0"] == ({"i": 0}, None) and out["t2"] == ({"i": 2}, None)
    assert out["t1"][0] is None and out["t1"][1]["error_type"] == "worker-lost"
