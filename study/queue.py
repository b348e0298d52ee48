"""The queue of a study's evaluation tasks: submitted to Ray as trials finish, harvested later.

Each evaluation runs as a Ray task with the spec's CPUs and GPUs per evaluation, retried up to
resources.max_failures times (exceptions included). The queue only runs and collects: what an
evaluation's result or failure becomes is the recorder's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from study.evaluations import PlannedEval
from study.spec import ResourcesSpec


@dataclass(frozen=True)
class PendingEval:
    """A planned evaluation and the MLflow run of the trial whose network it evaluates (None
    for a baseline: its run goes under the study's run)."""

    planned: PlannedEval
    trial_run_id: str | None = None


@dataclass(frozen=True)
class Finished:
    """An evaluation that returned: its result, or the error it failed with after its retries."""

    pending: PendingEval
    result: dict[str, Any] | None = None
    error: BaseException | None = None


class Backend(Protocol):
    """Where tasks run: submit returns a handle; wait returns the handles that are done."""

    def submit(self, pending: PendingEval) -> Any: ...

    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...

    def get(self, handle: Any) -> dict[str, Any]: ...


class RayBackend:
    """Evaluation tasks as Ray tasks (trainables.tune_entry.evaluate_remote)."""

    def __init__(self, resources: ResourcesSpec) -> None:
        self.options = {
            "num_cpus": resources.cpus_per_eval,
            "num_gpus": resources.gpus_per_eval,
            "max_retries": resources.max_failures,
            "retry_exceptions": True,
        }
        self._remote: Callable[..., Any] | None = None

    def submit(self, pending: PendingEval) -> Any:
        if self._remote is None:
            from trainables.tune_entry import evaluate_remote

            self._remote = evaluate_remote.options(**self.options).remote
        return self._remote(pending.planned.task)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        import ray

        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return list(done)

    def get(self, handle: Any) -> dict[str, Any]:
        import ray

        result: dict[str, Any] = ray.get(handle)
        return result


class EvalQueue:
    """Evaluations submitted and not yet harvested."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pending: dict[Any, PendingEval] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, evals: Sequence[PendingEval]) -> None:
        for ev in evals:
            self._pending[self.backend.submit(ev)] = ev

    def harvest(self, timeout: float = 0.0) -> list[Finished]:
        """Every evaluation that has returned, waiting up to timeout for the first one."""
        finished: list[Finished] = []
        while self._pending:
            done = self.backend.wait(list(self._pending), timeout)
            if not done:
                break
            for handle in done:
                ev = self._pending.pop(handle)
                try:
                    finished.append(Finished(ev, result=self.backend.get(handle)))
                except Exception as exc:  # a task that failed after its retries: reported
                    finished.append(Finished(ev, error=exc))
            timeout = 0.0
        return finished
