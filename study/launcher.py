"""Ray Tune for a study: Tune's environment, Ray's start, the Tuner over the trials, the callback.

The grid's cells (or a search's proposals) run as one Tune trial each, with a TrialPayload in
their config. The callback runs on the driver: it hands each epoch and each finished or failed
trial to the recorder, submits a finished trial's evaluations to the queue at once (no barrier
across the grid), and records the evaluations that returned at every step of Tune's loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.plan import describe_trial
from study.progress import Progress
from study.queue import EvalQueue, PendingEval
from study.recorder import Recorder
from study.signals import reclaim
from study.spec import SweepSpec
from trainables import storage
from trainables.config import ArchRef, LoadRequest, TrainConfig
from trainables.payload import PAYLOAD_KEY, TransferObjective, TrialPayload, trial_config

IDLE_WORKER_KEEP_MS = 3_600_000

# The evaluations of a trial that has just finished: (config, checkpoint, its MLflow run).
EvaluationsOf = Callable[[TrainConfig, str, str], list[PendingEval]]


def configure_tune_environment() -> None:
    """Tune's settings for a study, set by Study.run before Ray starts (a local Ray's workers
    inherit them), not on import: a process that only imports this module keeps Tune's defaults.

    Tune's own CSV/JSON/TensorBoard loggers duplicate what the sinks write; the trial processes
    keep the working directory so that relative data roots resolve as the user wrote them; every
    epoch's checkpoint forces an experiment snapshot, expected here and not a bottleneck."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # The study handles SIGINT itself (study/signals.py): Tune's handler would end the run
    # quietly, as if it had finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Tune's own console output: its newer engine prints an experiment table and a results
    # folder (whose files the sinks replace) even at verbose=0; the study shows its own progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The evaluations wait while Tune's trial actors hold every CPU. By default a local Ray
    # kills an idle worker after 1 s once the node has more workers than CPUs, so each
    # evaluation then starts a fresh worker that imports torch again (3-5 CPU-s each); kept
    # alive, the workers that ran the baselines run the evaluations. Ray still kills idle
    # workers first under memory pressure, and GPU tasks never reuse a worker (max_calls=1).
    os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", str(IDLE_WORKER_KEEP_MS))


def check_cluster_fits(spec: SweepSpec, address: str | None) -> None:
    """A request no node can hold would wait forever: a SpecError instead.

    A local Ray (no address) is checked against this machine before it is started."""
    from study.resources import check_resources, node_type_of_this_machine, node_types_from_ray

    if address is None:
        where, types = "the local Ray on this machine", [node_type_of_this_machine()]
    else:
        where, types = "the Ray cluster", node_types_from_ray()
    check_resources(spec.resources, types, where)


def start_ray(spec: SweepSpec, address: str | None) -> bool:
    """Connect to the cluster at address, or start a local Ray; False when Ray was already up
    in this process. Raises SpecError when the requests fit no node."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        check_cluster_fits(spec, None)
    ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
    reclaim()  # Ray's core worker took SIGTERM over: the study's cleanup would never run
    if address is not None:
        check_cluster_fits(spec, address)
    # The ResultGrid looks for Tune's own result files, which the sinks replace.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    return True


def earlier_attempts(ray_dir: str, trial_key: str) -> list[str]:
    """Folders of earlier attempts at a trial (whose checkpoints a new attempt resumes from)."""
    return [
        storage.join(ray_dir, name)
        for name, is_dir in storage.list_dir(ray_dir)
        if is_dir and name.startswith(trial_key)
    ]


def describe_trial_error(trial: Any) -> str:
    """The last line of a failed trial's traceback, and where the whole of it is."""
    error_file = getattr(trial, "error_file", None)
    last = "training failed"
    if error_file and Path(error_file).is_file():
        lines = [ln for ln in Path(error_file).read_text().splitlines() if ln.strip()]
        if lines:
            last = lines[-1].strip()
    return f"{last} (traceback: {error_file})" if error_file else last


class TrialHooks:
    """What the driver does on Tune's events: epochs and trials to the recorder, and a finished
    trial's evaluations to the queue at once; at every step of Tune's loop, the evaluations
    that returned are recorded."""

    def __init__(
        self,
        recorder: Recorder,
        queue: EvalQueue,
        evaluations_of: EvaluationsOf,
        progress: Progress,
    ) -> None:
        self.recorder, self.queue, self.evaluations_of = recorder, queue, evaluations_of
        self.progress = progress
        self.configs: dict[str, TrainConfig] = {}
        # The first error a hook raised. Tune turns an error in a callback into a TuneError
        # holding only its traceback's text; fit() raises this one instead (LeaseLostError,
        # a table's SchemaConflictError: errors that the CLI explains in one line).
        self.error: Exception | None = None

    def config(self, trial: Any) -> TrainConfig:
        if trial.trial_id not in self.configs:
            self.configs[trial.trial_id] = trial_config(trial.config)
        return self.configs[trial.trial_id]

    def started(self, trial: Any) -> None:
        cfg = self.config(trial)
        self.recorder.trial_run(cfg)
        self.progress.trial_started(trial.trial_id, describe_trial(cfg), cfg.optim.epochs)

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        cfg = self.config(trial)
        self.recorder.record_epoch(cfg, result)
        self.progress.trial_epoch(trial.trial_id, describe_trial(cfg), cfg.optim.epochs, result)

    def completed(self, trial: Any) -> None:
        checkpoint = None
        if trial.checkpoint is not None:
            checkpoint = storage.to_location(trial.checkpoint.filesystem, trial.checkpoint.path)
        cfg = self.config(trial)
        run_id = self.recorder.record_trial_done(cfg, checkpoint)
        if run_id is not None and checkpoint is not None:
            self.queue.submit(self.evaluations_of(cfg, checkpoint, run_id))
        self.progress.trial_ended(trial.trial_id)

    def failed(self, trial: Any) -> None:
        self.recorder.record_trial_failure(self.config(trial), describe_trial_error(trial))
        self.progress.trial_ended(trial.trial_id)

    def step(self) -> None:
        self.recorder.record_evaluations(self.queue.harvest(timeout=0.0))
        self.recorder.flush_if_due()
        self.progress.tick()


def _make_callback_class() -> type:
    from ray import tune

    class _StudyCallback(tune.Callback):
        """Tune's driver-side hooks, forwarded to the study's TrialHooks."""

        def __init__(self, hooks: TrialHooks | None) -> None:
            self.hooks = hooks

        def __reduce__(self) -> tuple[Any, ...]:
            # Tune pickles its callbacks into the experiment state (for Tuner.restore, which a
            # study never uses: a re-run resumes from its tables). The hooks are not pickled:
            # they hold the sinks and the printer, and `print` stops being picklable once Ray's
            # log thread has replaced builtins.print (its tqdm patch), which made Tuner() fail
            # at random.
            return (type(self), (None,))

        def _hooks(self) -> TrialHooks:
            if self.hooks is None:
                raise RuntimeError(
                    "this study callback was unpickled without its recorder and queue: a study "
                    "resumes by running `study run` again, not through Tune's restore"
                )
            return self.hooks

        def _call(self, hook: str, *args: Any) -> None:
            hooks = self._hooks()
            try:
                getattr(hooks, hook)(*args)
            except Exception as exc:
                hooks.error = hooks.error or exc
                raise

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._call("started", trial)

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self._call("result", trial, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._call("completed", trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._call("failed", trial)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            self._call("step")

    return _StudyCallback


def StudyCallback(  # noqa: N802
    recorder: Recorder,
    queue: EvalQueue,
    evaluations_of: EvaluationsOf,
    progress: Progress,
) -> Any:
    """A Tune callback bound to a study's recorder, queue and progress (its class is built
    lazily so that importing this module needs no ray)."""
    return _make_callback_class()(TrialHooks(recorder, queue, evaluations_of, progress))


def fit(tuner: Any, callback: Any) -> None:
    """Run the Tuner; an error of the study's own hooks is raised as itself, not as the
    TuneError that Tune wraps it in."""
    try:
        tuner.fit()
    except Exception as exc:
        error = callback.hooks.error if callback.hooks is not None else None
        if error is None or error is exc:
            raise
        raise error from exc


@dataclass(frozen=True)
class SearchState:
    """An Optuna search resumed from its storage: the storage and its finished trials."""

    storage: Any
    done: int

    def budget(self, spec: SweepSpec) -> int:
        assert spec.search is not None
        return max(0, spec.search.num_trials - self.done)


def grid_payloads(
    spec: SweepSpec, todo: list[TrainConfig], load: LoadRequest, ray_dir: str
) -> list[dict[str, Any]]:
    """One payload per grid cell to train, with its earlier attempts to resume from."""
    options = spec.training.run_options()
    return [
        TrialPayload(cfg, load, options, tuple(earlier_attempts(ray_dir, cfg.key))).to_tune()
        for cfg in todo
    ]


def search_payload(spec: SweepSpec, load: LoadRequest) -> TrialPayload:
    """What every trial of a search gets: the base config, arch choices and transfer objectives."""
    se = spec.search
    assert se is not None
    probe = spec.evaluations.transfer.to_config()
    targets = {t.to_ref().id: t.to_ref() for t in spec.evaluations.transfer.targets}
    objectives = tuple(
        TransferObjective(targets[o.metric.split(":", 1)[1]], probe)
        for o in se.objectives
        if o.metric.startswith("transfer:")
    )
    archs: tuple[ArchRef, ...] = tuple(a.to_ref() for a in se.arch_choices())
    return TrialPayload(
        spec.base_config(),
        load,
        spec.training.run_options(),
        search=True,
        archs=archs,
        objectives=objectives,
    )


def build_tuner(
    spec: SweepSpec,
    todo: list[TrainConfig],
    search: SearchState | None,
    load: LoadRequest,
    callback: Any,
) -> Any:
    """The Tuner of a study: the grid's cells to train, or the search's remaining budget."""
    from ray import tune

    from trainables.tune_entry import train_trial

    res = spec.resources
    results_dir = spec.results_dir()
    ray_dir = storage.join(results_dir, "ray", spec.name)
    attempt = time.strftime("%Y%m%d-%H%M%S")
    trainable = tune.with_resources(
        train_trial, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}
    )
    options: dict[str, Any]
    if search is None:
        payloads = grid_payloads(spec, todo, load, ray_dir)
        param_space: dict[str, Any] = {PAYLOAD_KEY: tune.grid_search(payloads)}
        options = {"max_concurrent_trials": res.max_concurrent_trials}
    else:
        from study.search import search_param_space, search_tune_options

        param_space = {PAYLOAD_KEY: search_payload(spec, load).to_tune()}
        param_space.update(search_param_space(spec))
        options = {
            "num_samples": search.budget(spec),
            **search_tune_options(spec, search.storage, search.done),
        }
    # Tune pickles its experiment (these closures too): they capture plain values only.
    is_search = search is not None
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            reuse_actors=res.reuse_actors,
            # One folder per attempt at a trial: a re-run never writes into the checkpoints
            # of an earlier attempt, which it may resume from.
            trial_dirname_creator=lambda t: (
                f"{trial_config(t.config).key}-{attempt}" + (f"-{t.trial_id}" if is_search else "")
            ),
            trial_name_creator=lambda t: describe_trial(trial_config(t.config)),
            **options,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage.join(results_dir, "ray"),
            verbose=0,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
