"""MLflow tracking of a study from the driver: study > trial > evaluation runs, logged in batches.

One parent run per study, one nested run per training trial (its config as params, per-epoch
metrics, tag trial_key) and one nested run per evaluation under its trial. Runs are found again
by their key tag, so running a study twice reuses its runs instead of creating new ones. Metrics
are buffered and sent with log_batch: one call per flush, not one per value. A tracking server
that goes away is waited for (each call retried with backoff), so an outage delays logging but
neither fails a trial nor loses a parquet row; logging catches up when the server returns.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from trainables import storage

KEY_TAG = "atsweep.key"
ROLE_TAG = "atsweep.role"
TRIAL_KEY_TAG = "trial_key"
EVAL_KEY_TAG = "eval_key"
# Why a run failed; removed when a later attempt at the same key finishes.
ERROR_TAG = "error"
_MAX_ERROR_LEN = 5000
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
_MAX_PARAM_LEN = 6000


def flatten_params(prefix: str, value: Any) -> dict[str, str]:
    """Nested dicts as dotted keys; lists and scalars as strings (MLflow params are strings)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten_params(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    text = "null" if value is None else str(value)
    return {prefix: text[:_MAX_PARAM_LEN]}


# Errors that mean "the request was wrong", not "the server is unreachable": never retried.
_PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}


class RetryingClient:
    """An MlflowClient whose calls wait for an unreachable tracking server (up to patience s)."""

    def __init__(self, client: MlflowClient, patience_s: float, say: Callable[[str], None]):
        self._client = client
        self._patience_s = patience_s
        self._say = say
        # Wall time spent in MLflow calls (retries included): the study reports its share.
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return retrying(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        def retrying(*args: Any, **kwargs: Any) -> Any:
            deadline = time.monotonic() + self._patience_s
            delay, warned = 0.5, False
            while True:
                try:
                    return method(*args, **kwargs)
                except MlflowException as exc:
                    if exc.error_code in _PERMANENT or time.monotonic() > deadline:
                        raise
                    problem: BaseException = exc
                except (
                    OSError
                ) as exc:  # connection refused or reset (requests' errors are OSErrors)
                    if time.monotonic() > deadline:
                        raise
                    problem = exc
                if not warned:
                    first = str(problem).strip().splitlines()[0][:200] if str(problem) else ""
                    self._say(
                        f"MLflow unreachable ({type(problem).__name__}: {first}); "
                        f"retrying for up to {self._patience_s:.0f} s"
                    )
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

        return call


def iter_runs(client: Any, experiment_id: str) -> Iterator[Run]:
    """Every run of an experiment, page by page (MLflow returns at most 1000 per call)."""
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


# MLflow 3's UI opens an experiment on the view of its kind: without this tag it guesses, and
# shows a study's experiment as a GenAI one (traces, an empty overview) rather than its runs.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


class MlflowSink:
    """The single MLflow writer of a study."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_location: str | Path,
        patience_s: float = 1800.0,
    ) -> None:
        # Fail each HTTP attempt fast; the RetryingClient does the waiting, with a message.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.client = RetryingClient(MlflowClient(tracking_uri=tracking_uri), patience_s, _warn)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            if storage.is_uri(artifact_location):
                uri = str(artifact_location)
            else:
                Path(artifact_location).mkdir(parents=True, exist_ok=True)
                uri = Path(artifact_location).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=uri, tags={EXPERIMENT_KIND: MODEL_TRAINING}
            )
        else:
            self.experiment_id = found.experiment_id
            if found.tags.get(EXPERIMENT_KIND) is None:  # created before the tag was set
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        self._runs_by_key = self._index_runs()
        self._metrics: dict[str, list[Metric]] = defaultdict(list)
        self._tags: dict[str, dict[str, str]] = defaultdict(dict)

    def _index_runs(self) -> dict[str, str]:
        """key tag -> run id of every run of this experiment that carries one."""
        index: dict[str, str] = {}
        self.running_at_start: list[str] = []
        self._with_error: set[str] = set()
        for run in iter_runs(self.client, self.experiment_id):
            key = run.data.tags.get(KEY_TAG)
            if key:
                index.setdefault(key, run.info.run_id)
                if run.info.status == "RUNNING":
                    self.running_at_start.append(run.info.run_id)
                if ERROR_TAG in run.data.tags:
                    self._with_error.add(run.info.run_id)
        return index

    def run_for(
        self,
        key: str,
        *,
        name: str,
        role: str,
        parent_run_id: str | None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> str:
        """The run with this key (created the first time, marked RUNNING again otherwise).

        A new run gets its params and metrics in one log_batch: an evaluation's run costs
        three calls (create, log_batch, set_terminated at end_run). A run found again gets the
        tags again (they may have changed since it was created) with its metrics, in one batch.
        """
        all_tags = {KEY_TAG: key, ROLE_TAG: role, MLFLOW_RUN_NAME: name, **(tags or {})}
        if parent_run_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run_id = self._runs_by_key.get(key)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
            run_id = run.info.run_id
            self._runs_by_key[key] = run_id
            flat = flatten_params("", dict(params or {}))
            self._log_batches(
                run_id,
                metrics=self._metric_list(metrics or {}, 0),
                params=[Param(k, v) for k, v in flat.items()],
            )
        else:
            self.client.update_run(run_id, status="RUNNING")
            self._log_batches(run_id, metrics=self._metric_list(metrics or {}, 0), tags=all_tags)
        return run_id

    def end_orphaned_runs(self) -> int:
        """Mark KILLED the runs left RUNNING by a driver that died (this sink is the study's
        single writer, so nothing else is running them); work that resumes reopens its run."""
        for run_id in self.running_at_start:
            self.client.set_terminated(run_id, status="KILLED")
        count = len(self.running_at_start)
        self.running_at_start = []
        return count

    def find_run(self, key: str) -> str | None:
        """The id of the run carrying this key, or None."""
        return self._runs_by_key.get(key)

    @staticmethod
    def _metric_list(metrics: Mapping[str, float], step: int) -> list[Metric]:
        now = int(time.time() * 1000)
        return [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Buffer metrics; they are sent at the next flush."""
        self._metrics[run_id].extend(self._metric_list(metrics, step))

    def _log_batches(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """As few log_batch calls as MLflow's per-call limits allow (none when all are empty)."""
        items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        chunks = [
            [values[i : i + limit] for i in range(0, len(values), limit)]
            for values, limit in (
                (metrics, _MAX_METRICS),
                (params, _MAX_PARAMS),
                (items, _MAX_TAGS),
            )
        ]
        for m, p, t in zip_longest(*chunks, fillvalue=[]):
            self.client.log_batch(run_id, metrics=list(m), params=list(p), tags=list(t))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Buffer tags; they are sent with the run's metrics at the next flush (no call of their
        own: a trial's machine tags cost nothing more than its epochs' metrics)."""
        self._tags[run_id].update({k: str(v) for k, v in tags.items()})

    def mark_failed(self, run_id: str, error: str) -> None:
        """Tag a run with why it failed (its buffered metrics go with the tag) and end it FAILED."""
        self.end_run(run_id, "FAILED", tags={ERROR_TAG: error[:_MAX_ERROR_LEN]})
        self._with_error.add(run_id)

    def flush(
        self, run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> dict[str, float]:
        """Send buffered metrics and tags with log_batch (all runs, or one run with these tags
        too); returns the seconds spent on each run (the study splits its logging time by run)."""
        run_ids = (
            [run_id] if run_id is not None else list(dict.fromkeys([*self._metrics, *self._tags]))
        )
        spent: dict[str, float] = {}
        for rid in run_ids:
            start = self.client.seconds
            extra = (tags or {}) if rid == run_id else {}
            buffered = {**self._tags.pop(rid, {}), **extra}
            self._log_batches(rid, metrics=self._metrics.pop(rid, []), tags=buffered)
            spent[rid] = self.client.seconds - start
        return spent

    def end_run(
        self, run_id: str, status: str = "FINISHED", tags: Mapping[str, str] | None = None
    ) -> None:
        """Flush the run's metrics (and tags) and mark it FINISHED, FAILED or KILLED.

        A run that finishes drops the error tag an earlier failed attempt left on it."""
        self.flush(run_id, tags)
        if status == "FINISHED" and run_id in self._with_error:
            self.client.delete_tag(run_id, ERROR_TAG)
            self._with_error.discard(run_id)
        self.client.set_terminated(run_id, status=status)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)
