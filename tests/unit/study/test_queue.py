"""The evaluation queue: what it submits comes back once, as a result or as the error it raised."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import pytest

from study.evaluations import PlannedEval
from study.queue import EvalQueue, PendingEval
from trainables.config import DataConfig, EvalTask, ProbeConfig

pytestmark = pytest.mark.unit


class ThreadBackend:
    """Runs each task's `work` in a thread pool: the queue's logic without Ray."""

    def __init__(self, work: dict[str, Any]) -> None:
        self.work = work
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.submitted: list[str] = []

    def submit(self, pending: PendingEval) -> Future[dict[str, Any]]:
        key = pending.planned.task.eval_key
        self.submitted.append(key)
        return self.pool.submit(self.work[key])

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        done, _ = wait(handles, timeout=timeout, return_when="FIRST_COMPLETED")
        return list(done)

    def get(self, handle: Future[dict[str, Any]]) -> dict[str, Any]:
        return handle.result()


def pending(key: str, run_id: str | None = None) -> PendingEval:
    task = EvalTask("raw_pixels", key, DataConfig(), ProbeConfig())
    return PendingEval(PlannedEval(task, "transfer", {"eval_key": key}, f"eval {key}"), run_id)


def test_every_submitted_evaluation_comes_back_once_with_its_result_or_error() -> None:
    release = threading.Event()

    def slow() -> dict[str, Any]:
        release.wait()
        return {"test_acc": 0.5}

    def broken() -> dict[str, Any]:
        raise RuntimeError("no such target")

    backend = ThreadBackend({"a": lambda: {"test_acc": 0.9}, "b": broken, "c": slow})
    queue = EvalQueue(backend)
    queue.submit([pending("a", "run-1"), pending("b"), pending("c")])
    assert len(queue) == 3 and backend.submitted == ["a", "b", "c"]

    finished = []
    while len(finished) < 2:  # a and b end on their own; c waits for the event
        finished += queue.harvest(timeout=5.0)
    assert len(queue) == 1
    by_key = {f.pending.planned.task.eval_key: f for f in finished}
    assert set(by_key) == {"a", "b"}
    assert by_key["a"].result == {"test_acc": 0.9} and by_key["a"].error is None
    assert by_key["a"].pending.trial_run_id == "run-1"
    assert by_key["b"].result is None and "no such target" in str(by_key["b"].error)

    assert queue.harvest(timeout=0.0) == []  # nothing new, and no waiting
    release.set()
    last = []
    while not last:
        last = queue.harvest(timeout=5.0)
    assert [f.pending.planned.task.eval_key for f in last] == ["c"]
    assert len(queue) == 0 and queue.harvest(timeout=5.0) == []
    backend.pool.shutdown()
