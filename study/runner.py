"""A study's driver: plan, find what is cached, start Ray, launch the trials, drain, finish.

The grid (or an Optuna search) trains on Ray Tune; as each trial finishes, its evaluations go to
the queue at once (no barrier across the grid). Anything whose key is already in the tables is
not computed again, so re-running a study resumes it and an extended grid runs only its new
cells. The recorder (study/recorder.py) writes everything; this module only decides what runs.
A Study holds the study's lease (study/lease.py) from its construction until it is closed (as a
context manager, or when it is garbage-collected): one driver at a time. A signal
(study/signals.py) stops it with its runs KILLED and the count of what is left, which the same
command resumes.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from study.evaluations import PlanContext
from study.launcher import (
    SearchState,
    StudyCallback,
    build_tuner,
    configure_tune_environment,
    fit,
    start_ray,
)
from study.lease import StudyLease
from study.networks import Network, resolve_networks
from study.plan import not_cached, plan_baselines, plan_trial_evaluations
from study.progress import Progress, View, Work
from study.queue import EvalQueue, PendingEval, RayBackend
from study.recorder import Recorder, StudySummary
from study.signals import as_interrupted
from study.spec import SpecError, SweepSpec
from trainables import storage
from trainables.config import LoadRequest, TrainConfig, train_config_from_dict

Printer = Callable[[str], None]


def load_request(spec: SweepSpec) -> LoadRequest:
    """Where the study's datasets are (a local data.root resolved against the working
    directory; a URI as it is, copied into each node's cache by the processes that read it)."""
    root = spec.data.root
    if root and not storage.is_uri(root):
        root = str(Path(root).expanduser().resolve())
    return LoadRequest(root=root or None, download=spec.data.download, workers=spec.data.workers)


def check_data(spec: SweepSpec, load: LoadRequest) -> None:
    """Every source and target is where the spec says, before anything runs or is written.

    Raises DataMissingError (one line: dataset, folder searched, fix). With download on,
    torchvision fetches what is missing inside the trials instead.
    """
    from trainables.data.vision import check_available

    names = {s.dataset for s in spec.sources()} | {
        t.dataset for t in spec.evaluations.transfer.targets
    }
    for name in sorted(names):
        check_available(name, load)


class Study:
    """One study on one Ray cluster: what to run, handed to Tune and the evaluation queue."""

    def __init__(self, spec: SweepSpec, printer: Printer = print, view: View | None = None) -> None:
        self.spec = spec
        self.say = printer
        self.load = load_request(spec)
        check_data(spec, self.load)
        # Every network's file found, checksummed and loaded onto its arch before anything is
        # written (the checks of `study validate`).
        self.networks = resolve_networks(spec, self.load, check=True)
        self.lease = StudyLease(spec.results_dir(), spec.output.lease_timeout_s, printer)
        self.lease.acquire()  # before anything is written; LeaseHeldError if another driver runs
        weakref.finalize(self, self.lease.release)
        try:
            self.recorder = Recorder(spec, printer, self.lease)
        except BaseException:
            self.lease.release()
            raise
        self.queue = EvalQueue(RayBackend(spec.resources))
        # What runs, for the terminal (study/progress.py); quiet unless a view is given.
        self.progress = Progress(spec.name, self.recorder.summary, lambda: len(self.queue), view)
        self.imported = tuple(n.config for n in self.networks)
        self.context = PlanContext(spec, self.load, self.recorder.results_dir, self.imported)
        self.configs = spec.expand()
        self.todo: list[TrainConfig] = []
        self.to_import: list[Network] = []
        self.search: SearchState | None = None
        self.spec_path: Path | None = None
        self.started_ray = False

    def close(self) -> None:
        """Release the study's lease: another driver may run the study from now on."""
        self.lease.release()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, address: str | None = None, spec_path: Path | None = None) -> StudySummary:
        """Train what is not in the tables, evaluate what is not, and record it all.

        On a signal: what was done is recorded, unfinished runs end KILLED and Interrupted
        propagates with the count of unfinished trials and evaluations."""
        configure_tune_environment()
        started = time.monotonic()
        self.spec_path = spec_path
        try:
            self.recorder.write_study_info()
            self.recorder.announce_ui()
            self.todo, evals = self.find_work()
            budget = self.open_search()
            work = self.todo or evals or budget or self.to_import
            self.started_ray = bool(work) and self.start_ray(address)
            self.recorder.open_study(spec_path)
            self.queue.submit(evals)
            if work:
                self.progress.start(self.work_ahead(bool(budget)))
            self.import_networks()
            if self.todo or budget:
                callback = self.callback()
                fit(build_tuner(self.spec, self.todo, self.search, self.load, callback), callback)
            self.drain()
            return self.recorder.finish(started)
        except KeyboardInterrupt as exc:
            stop = as_interrupted(exc)
            stop.unfinished = self.unfinished()
            if self.recorder.study_run_id:
                self.recorder.interrupted(started, stop.name)
            raise stop from None
        finally:
            self.progress.stop()  # the live panel's last frame, before the closing lines
            self.shut_down_ray()

    def work_ahead(self, search: bool) -> Work:
        """The trials' epochs and evaluations ahead, and the cluster that runs them (for the
        progress's estimate of the time left)."""
        trials = self.todo or ([self.spec.base_config()] if search else [])
        cpus = 1.0
        if self.started_ray:
            import ray

            cpus = float(ray.cluster_resources().get("CPU", 1.0))
        res = self.spec.resources
        return Work(
            epochs_per_trial=sum(c.optim.epochs for c in trials) / len(trials) if trials else 0.0,
            evals_per_trial=self.evaluations_per_network(trials[0]) if trials else 0.0,
            cpus=cpus,
            cpus_per_trial=res.cpus_per_trial,
            cpus_per_eval=res.cpus_per_eval,
        )

    def shut_down_ray(self) -> None:
        if self.started_ray:
            import ray

            # Now rather than at exit, where Ray first sleeps 0.5 s for late log lines: every
            # task has returned (or the study was stopped). A local cluster stops; a remote one
            # only loses this driver, and with it the trials and tasks it started.
            ray.shutdown()
            self.started_ray = False

    def unfinished(self) -> tuple[int, int]:
        """(trials, evaluations) this run set out to do and did not: the trials not ended, and
        the evaluations queued plus those of the trials not ended."""
        s = self.recorder.summary
        if self.spec.search is not None:
            budget = self.search.budget(self.spec) if self.search is not None else 0
            trials_left = max(0, budget - s.trials_done - s.trials_failed)
            per_trial = self.evaluations_per_network(self.spec.base_config())
            return trials_left, len(self.queue) + trials_left * per_trial
        runs = self.recorder.trial_runs
        ended = {k for k, run in runs.items() if run not in self.recorder.open_trial_runs}
        planned = [*self.todo, *(n.config for n in self.to_import)]
        left = [cfg for cfg in planned if cfg.key not in ended]
        return len(left), len(self.queue) + sum(map(self.evaluations_per_network, left))

    def evaluations_per_network(self, cfg: TrainConfig) -> int:
        return len(plan_trial_evaluations(self.spec, cfg, "", self.recorder.results_dir, self.load))

    def find_work(self) -> tuple[list[TrainConfig], list[PendingEval]]:
        """The grid cells to train, and the evaluations to run now (the baselines and those of
        networks trained by an earlier driver), leaving out everything in the tables."""
        cached = self.recorder.cached_trials()
        baselines = not_cached(plan_baselines(self.spec, self.load, self.imported), self.recorder)
        evals = [PendingEval(p) for p in baselines]
        todo: list[TrainConfig] = []
        for network in self.networks:
            trial = cached.get(network.config.key)
            if trial is None:
                self.to_import.append(network)
                continue
            self.recorder.summary.trials_cached += 1
            evals += self.evaluations_of(network.config, trial.checkpoint, trial.run_id)
        imports = f", {len(self.to_import)} networks to import" if self.networks else ""
        for cfg in self.configs:
            trial = cached.get(cfg.key)
            if trial is None:
                todo.append(cfg)
                continue
            self.recorder.summary.trials_cached += 1
            evals += self.evaluations_of(cfg, trial.checkpoint, trial.run_id)
        if self.spec.search is None:
            self.say(
                f"study {self.spec.name}: {self.spec.trial_count()} trials "
                f"({self.recorder.summary.trials_cached} cached, {len(todo)} to run{imports}), "
                f"{len(evals)} evaluations queued now"
            )
            return todo, evals
        # The search's earlier trials, whose evaluations an earlier driver may not have finished.
        for trial in cached.values():
            if trial.proposed_by == self.recorder.proposed_by and trial.config_json:
                cfg = train_config_from_dict(json.loads(trial.config_json))
                evals += self.evaluations_of(cfg, trial.checkpoint, trial.run_id)
        self.say(f"study {self.spec.name}: {len(evals)} evaluations queued now")
        return todo, evals

    def evaluations_of(self, cfg: TrainConfig, checkpoint: str, run_id: str) -> list[PendingEval]:
        """The evaluations of a trained network that are not in the tables yet."""
        self.recorder.adopt_trial_run(cfg.key, run_id)
        planned = plan_trial_evaluations(
            self.spec, cfg, checkpoint, self.recorder.results_dir, self.load
        )
        return [PendingEval(p, run_id) for p in not_cached(planned, self.recorder)]

    def import_networks(self) -> None:
        """Write each imported network not in the tables as one of our checkpoints (in the
        results folder, where every node reads it), record its trial, and submit its
        evaluations at once (they run while the next network is imported). Run by the driver:
        reading, mapping and writing a file is I/O, the same reading `study validate` does;
        what costs compute runs on the cluster."""
        from trainables.imported import import_network

        for network in self.to_import:
            cfg = network.config
            destination = storage.join(self.recorder.results_dir, "imported", cfg.key)
            report = import_network(cfg, network.local, network.format, destination)
            origin = {
                "location": network.location,
                "format": report.format,
                "normalization": report.normalization,
                "ignored_keys": len(report.ignored_keys),
            }
            summary = f"{report.format}, normalisation {report.normalization}"
            run_id = self.recorder.record_import(cfg, destination, origin, summary)
            self.queue.submit(self.evaluations_of(cfg, destination, run_id))

    def open_search(self) -> int:
        """For a search: open its Optuna study and return how many trials are left to propose
        (0 for a grid)."""
        if self.spec.search is None:
            return 0
        from study.search import open_optuna_study

        storage, done, orphans = open_optuna_study(self.spec)
        self.search = SearchState(storage, done)
        self.recorder.summary.trials_cached = min(done, self.spec.search.num_trials)
        if orphans:
            self.say(f"marked {orphans} Optuna trials FAIL: left RUNNING by an earlier driver")
        budget = self.search.budget(self.spec)
        self.say(
            f"search {self.spec.search.sampler}: {done} of {self.spec.search.num_trials} "
            f"trials done, {budget} to propose"
        )
        return budget

    def start_ray(self, address: str | None) -> bool:
        """Ray started (or joined) for this run; a request no node fits ends the study's run
        FAILED with the error, before anything is trained."""
        try:
            return start_ray(self.spec, address)
        except SpecError as exc:
            self.recorder.fail_study(exc, self.spec_path)
            raise

    def callback(self) -> object:
        """The Tune callback of this study: epochs and trials to the recorder, and each
        finished trial's evaluations to the queue."""
        return StudyCallback(self.recorder, self.queue, self.evaluations_of, self.progress)

    def drain(self) -> None:
        """Wait for every evaluation in the queue, recording each as it returns."""
        self.recorder.record_evaluations(self.queue.harvest(timeout=0.0))
        while len(self.queue):
            self.recorder.record_evaluations(self.queue.harvest(timeout=5.0))
            self.recorder.flush_if_due()
            self.progress.tick()
