"""The single writer of a study: its MLflow runs, parquet rows, study.json and the run's summary.

The study's run holds one nested run per training trial and, under it, one per evaluation (the
baselines sit under the study's run). Each trial's epochs become rows of the epochs table and
metrics of its run, a finished trial a trials row, a finished evaluation a row of its kind's
table (study/evaluations.py); rows and metrics are buffered and written every FLUSH_EVERY_S (one
part per table) and at the end, when the tables are compacted. Before each write the recorder
checks that this driver still holds the study's lease, and a SIGINT or SIGTERM waits for the
write to end (study/signals.py). It records and returns: it never schedules work, and it is the
only code that writes.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from study.evaluations import EVAL_TABLES, EVALUATIONS, ArtifactContext, evaluation_params
from study.mlflow_ui import ui_lines
from study.plan import describe_trial
from study.provenance import as_tags, node_machine, provenance
from study.queue import Finished, PendingEval
from study.signals import deferred
from study.sinks.mlflow import EVAL_KEY_TAG, TRIAL_KEY_TAG, MlflowSink
from study.sinks.parquet import ParquetSink, read_table
from study.spec import IMPORTED, SweepSpec
from trainables import storage
from trainables.config import TrainConfig, to_canonical

Printer = Callable[[str], None]

# Buffered rows and metrics go out this often: each flush is a parquet part of each table that
# has new rows and one MLflow call per run with new metrics.
FLUSH_EVERY_S = 10.0
# A table of this many parts is compacted at the next flush (a long study writes one per flush;
# readers such as `study status` open each part), and every table when the study ends.
COMPACT_AFTER_PARTS = 200
PROPOSED_BY_TAG = "atsweep.proposed_by"
RUN_PACKAGES = (
    *("atsweep", "torch", "torchvision", "ray", "mlflow", "optuna", "pyarrow", "pandas"),
    *("numpy", "safetensors"),
)


@dataclass
class StudySummary:
    """What a study run did, for the CLI's closing lines."""

    trials_total: int = 0
    trials_cached: int = 0
    trials_done: int = 0
    trials_failed: int = 0
    evals_cached: int = 0
    evals_done: int = 0
    evals_failed: int = 0
    wall_time_s: float = 0.0
    trial_time_s: float = 0.0  # summed wall time of the trials trained in this run
    eval_time_s: float = 0.0  # summed wall time of the evaluations run
    mlflow_s: float = 0.0  # driver time in MLflow calls
    parquet_s: float = 0.0  # driver time writing parquet parts
    eval_logging_s: float = 0.0  # the part of mlflow_s + parquet_s that recorded evaluations
    experiment_id: str = ""  # the study's MLflow experiment (its runs table's address)
    failures: list[str] = field(default_factory=list)

    @property
    def logging_share(self) -> float:
        """MLflow and parquet time over the trial and evaluation time (NaN when none ran)."""
        work = self.trial_time_s + self.eval_time_s
        return (self.mlflow_s + self.parquet_s) / work if work > 0 else math.nan

    @property
    def trial_logging_share(self) -> float:
        """The logging of the study and its trials (runs, params, per-epoch metrics and rows)
        over the trials' time (NaN when none trained)."""
        logging = self.mlflow_s + self.parquet_s - self.eval_logging_s
        return logging / self.trial_time_s if self.trial_time_s > 0 else math.nan

    @property
    def eval_logging_share(self) -> float:
        """The logging of the evaluations (a run each, its artifacts, its row) over their time."""
        return self.eval_logging_s / self.eval_time_s if self.eval_time_s > 0 else math.nan

    def shares(self) -> dict[str, float]:
        return {
            "logging_share": self.logging_share,
            "trial_logging_share": self.trial_logging_share,
            "eval_logging_share": self.eval_logging_share,
        }

    def timing_metrics(self) -> dict[str, float]:
        """The run's time split, as metrics of the study's MLflow run."""
        out = {
            "study/trial_time_s": self.trial_time_s,
            "study/eval_time_s": self.eval_time_s,
            "study/mlflow_s": self.mlflow_s,
            "study/parquet_s": self.parquet_s,
        }
        out.update({f"study/{k}": v for k, v in self.shares().items() if not math.isnan(v)})
        return out


class Lease(Protocol):
    """What the recorder asks of the study's lease: raise if this driver lost it."""

    def check(self) -> None: ...


class NoLease:
    """For a recorder used without a lease (tests, tools that only read)."""

    def check(self) -> None:
        return None


@dataclass(frozen=True)
class CachedTrial:
    """A trial already in the trials table: where its network is and its MLflow run."""

    trial_key: str
    checkpoint: str
    run_id: str
    config_json: str | None
    proposed_by: str | None


# The columns of a trials row that describe training: null for an imported network.
TRAINING_COLUMNS = (
    *("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule"),
    *("attack_steps", "attack_step_size", "eval_attack_steps"),
)


def trial_config_row(cfg: TrainConfig, study: str) -> dict[str, Any]:
    """The config columns of a trials row (those of training null for an imported network)."""
    row = {
        "trial_key": cfg.key,
        "study": study,
        "source": cfg.source.id,
        "source_dataset": cfg.source.name,
        "source_classes": list(cfg.source.classes) if cfg.source.classes is not None else None,
        "arch": cfg.arch.id,
        "arch_name": cfg.arch.name,
        "width": cfg.arch.width,
        "norm": cfg.norm,
        "attack": cfg.attack_id,
        "attack_method": cfg.attack.method,
        "eps": cfg.eps,
        "seed": cfg.seed,
        "epochs": cfg.optim.epochs,
        "batch_size": cfg.optim.batch_size,
        "optimizer": cfg.optim.optimizer,
        "lr": cfg.optim.lr,
        "momentum": cfg.optim.momentum,
        "weight_decay": cfg.optim.weight_decay,
        "schedule": cfg.optim.schedule,
        "attack_steps": cfg.attack.steps,
        "attack_step_size": cfg.attack.alpha(cfg.eps),
        "eval_attack_steps": cfg.eval_attack.steps,
        "config_json": json.dumps(to_canonical(asdict(cfg)), sort_keys=True),
    }
    if cfg.imported:
        row.update(dict.fromkeys(TRAINING_COLUMNS), attack_method=cfg.attack_id)
    return row


def _measured(value: Any) -> Any:
    """None for a metric that was not measured (NaN), the value otherwise."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


class Recorder:
    """Writes everything a study produces, and answers what is already written."""

    def __init__(
        self, spec: SweepSpec, printer: Printer = print, lease: Lease | None = None
    ) -> None:
        self.spec = spec
        self.say = printer
        self.lease: Lease = lease if lease is not None else NoLease()
        self.results_dir = spec.results_dir()
        self.parquet = ParquetSink(storage.join(self.results_dir, "tables"))
        self.mlflow = MlflowSink(
            spec.tracking_uri(), spec.name, storage.join(self.results_dir, "mlartifacts")
        )
        self.proposed_by = spec.search.proposed_by() if spec.search else "grid"
        self.summary = StudySummary(
            trials_total=spec.trial_count(), experiment_id=self.mlflow.experiment_id
        )
        self.study_run_id = ""
        # The project's commit and this machine's software, on the study's run and study.json;
        # the commit and the software (the nodes install the same) on each trial's run too.
        self.provenance = provenance()
        self.trial_provenance = {
            k: self.provenance[k] for k in ("git_commit", "git_dirty", "torch", "cuda", "cudnn")
        }
        self.machine_tagged: set[str] = set()
        self.trial_runs: dict[str, str] = {}
        self.open_trial_runs: set[str] = set()  # opened by this driver, not ended yet
        self.last_results: dict[str, dict[str, Any]] = {}
        self._eval_mlflow_s = 0.0
        self.last_flush = time.monotonic()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around every write: the lease still held, and no signal cuts the write short."""
        self.lease.check()
        with deferred():
            yield

    # ----- what is written already ------------------------------------------------------------
    def has(self, table: str, *key: Any) -> bool:
        """Whether a row with this key is in the table."""
        return self.parquet.has(table, *key)

    def cached_trials(self) -> dict[str, CachedTrial]:
        """Every trial in the trials table, by trial_key."""
        columns = ["trial_key", "checkpoint_path", "mlflow_run_id", "config_json", "proposed_by"]
        rows = read_table(storage.join(self.parquet.tables_dir, "trials"), "trials", columns)
        cached: dict[str, CachedTrial] = {}
        for r in rows.to_pylist():
            cached.setdefault(r["trial_key"], CachedTrial(*(r[c] for c in columns)))
        return cached

    def adopt_trial_run(self, trial_key: str, run_id: str) -> None:
        """The MLflow run of a trial trained by an earlier driver (its evaluations nest in it)."""
        self.trial_runs[trial_key] = run_id

    # ----- the study's run --------------------------------------------------------------------
    def open_study(self, spec_path: Path | None) -> str:
        """Once per driver: mark runs an earlier driver left RUNNING, then open the study's run."""
        if self.study_run_id:
            return self.study_run_id
        with self.writing():
            orphaned = self.mlflow.end_orphaned_runs()
            if orphaned:
                self.say(f"marked {orphaned} MLflow runs KILLED: left RUNNING by an earlier driver")
            self.study_run_id = self.mlflow.run_for(
                f"study:{self.spec.name}",
                name=self.spec.name,
                role="study",
                parent_run_id=None,
                params=self.spec.model_dump(mode="json"),
                tags={"results_dir": self.results_dir, **as_tags(self.provenance)},
            )
            if spec_path is not None:
                self.mlflow.log_artifact(self.study_run_id, spec_path)
        return self.study_run_id

    def announce_ui(self) -> None:
        """Where the study's MLflow UI is: printed first, so it can be opened while it runs."""
        for line in ui_lines(self.spec.tracking_uri(), self.spec.name, self.mlflow.experiment_id):
            self.say(line)

    def fail_study(self, error: BaseException, spec_path: Path | None) -> None:
        """End the study's run FAILED with the error (a study that could not start)."""
        with self.writing():
            self.mlflow.mark_failed(self.open_study(spec_path), str(error))
            self.flush()

    def write_study_info(self, last_run: dict[str, Any] | None = None) -> None:
        """RESULTS/study.json: the spec and the software of this run, for reports; at the end
        of a run also what it did and where its time went (last_run)."""
        from analysis.report import software_versions

        info: dict[str, Any] = {
            "name": self.spec.name,
            "tracking_uri": self.spec.tracking_uri(),
            "spec": self.spec.model_dump(mode="json"),
            "versions": software_versions(RUN_PACKAGES),
            "provenance": self.provenance,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if last_run is not None:
            info["last_run"] = last_run
        text = json.dumps(info, indent=2, sort_keys=False)
        storage.write_bytes(storage.join(self.results_dir, "study.json"), text.encode())

    def finish(self, started: float) -> StudySummary:
        """Flush, compact the tables, end the study's run (FAILED when anything failed) and
        write study.json."""
        with self.writing():
            self.flush()
            for done in self.parquet.compact():
                if done.duplicates:
                    self.say(
                        f"compacted {done.table}: {done.duplicates} repeated rows removed "
                        "(written twice by drivers that ran at once before the study lease)"
                    )
            return self._end(started, "FAILED" if self.summary.failures else "FINISHED")

    def interrupted(self, started: float, signal_name: str) -> StudySummary:
        """A signal stopped the study: buffered rows and metrics written, the trials this driver
        was training and the study's run ended KILLED."""
        with self.writing():
            self.flush()
            for run_id in sorted(self.open_trial_runs):
                self.mlflow.end_run(run_id, "KILLED", tags={"atsweep.stopped_by": signal_name})
            self.open_trial_runs.clear()
            return self._end(started, "KILLED", interrupted_by=signal_name)

    def _end(self, started: float, status: str, interrupted_by: str | None = None) -> StudySummary:
        s = self.summary
        s.mlflow_s, s.parquet_s = self.mlflow.client.seconds, self.parquet.seconds
        eval_tables = set(EVAL_TABLES)
        s.eval_logging_s = self._eval_mlflow_s + sum(
            t for name, t in self.parquet.seconds_by_table.items() if name in eval_tables
        )
        self.mlflow.log_metrics(self.study_run_id, s.timing_metrics())
        self.mlflow.end_run(self.study_run_id, status)
        s.wall_time_s = time.monotonic() - started
        last_run: dict[str, Any] = {**asdict(s), **s.shares(), "status": status}
        if interrupted_by is not None:
            last_run["interrupted_by"] = interrupted_by
        self.write_study_info(last_run=last_run)
        return s

    # ----- trials -----------------------------------------------------------------------------
    def trial_run(self, cfg: TrainConfig) -> str:
        """The trial's MLflow run (opened the first time it is asked for in this driver)."""
        key = cfg.key
        if key not in self.trial_runs:
            with self.writing():  # the run and its record here, or neither
                run_id = self.mlflow.run_for(
                    f"trial:{key}",
                    name=describe_trial(cfg),
                    role="trial",
                    parent_run_id=self.study_run_id,
                    params=to_canonical(asdict(cfg)),
                    tags={
                        TRIAL_KEY_TAG: key,
                        PROPOSED_BY_TAG: self.proposed_by,
                        **as_tags(self.trial_provenance),
                    },
                )
                self.trial_runs[key] = run_id
                self.open_trial_runs.add(run_id)
        return self.trial_runs[key]

    def record_epoch(self, cfg: TrainConfig, result: dict[str, Any]) -> None:
        """Buffer one epoch's row and metrics (written at the next flush)."""
        epoch = int(result["epoch"])
        metrics = {
            k: v
            for k, v in result.items()
            if "/" in k and isinstance(v, (int, float)) and not math.isnan(v)
        }
        run_id = self.trial_run(cfg)
        self.mlflow.log_metrics(run_id, metrics, step=epoch)
        if run_id not in self.machine_tagged and result.get("node_id"):
            # The machine that trains it, once: its host and GPU model, from Ray's node table.
            self.machine_tagged.add(run_id)
            machine = node_machine(str(result["node_id"]))
            if "trial/bf16" in result:  # the precision the trial's machine gave it
                machine["precision"] = "bf16" if result["trial/bf16"] else "fp32"
            if machine:
                with self.writing():  # a write like any other: only while the lease is held
                    self.mlflow.set_tags(run_id, as_tags(machine))
        self.parquet.add(
            "epochs",
            [
                {
                    "trial_key": cfg.key,
                    "epoch": epoch,
                    "train_loss": result.get("train/loss"),
                    "train_acc": result.get("train/acc"),
                    "test_acc_clean": result.get("test/acc_clean"),
                    # null in the epochs between robust evaluations (training.robust_eval_every)
                    "test_acc_pgd": _measured(result.get("test/acc_pgd")),
                    "epoch_time_s": result.get("time/epoch_s"),
                }
            ],
        )
        self.last_results[cfg.key] = result

    def recover_epochs(self, cfg: TrainConfig, checkpoint: str) -> list[dict[str, Any]]:
        """Epochs in the final checkpoint's history that no table holds yet (their reports
        were lost with an earlier driver) are recorded now; returns the whole history."""
        manifest = json.loads(storage.read_bytes(storage.join(checkpoint, "manifest.json")))
        history: list[dict[str, Any]] = manifest.get("history", [])
        for metrics in history:
            if not self.parquet.has("epochs", cfg.key, int(metrics["epoch"])):
                self.record_epoch(cfg, metrics)
        return history

    def flush(self) -> None:
        """Write the buffered rows (a part per table) and send the buffered metrics."""
        with self.writing():
            self.parquet.flush()
            spent = self.mlflow.flush()
            self.parquet.compact(min_parts=COMPACT_AFTER_PARTS)
        # The metrics sent to the run of a trial that has ended are its evaluations' (mirrored
        # on the trial's run, batched until the flush): their time is the evaluations' logging.
        ended_trials = set(self.trial_runs.values()) - self.open_trial_runs
        self._eval_mlflow_s += sum(t for run, t in spent.items() if run in ended_trials)
        self.last_flush = time.monotonic()

    def flush_if_due(self) -> None:
        if time.monotonic() - self.last_flush > FLUSH_EVERY_S:
            self.flush()

    def record_trial_done(self, cfg: TrainConfig, checkpoint: str | None) -> str | None:
        """The trials row and the end of the trial's run; returns the run's id (None when the
        trial left no checkpoint, which is recorded as a failure)."""
        run_id = self.trial_run(cfg)
        if checkpoint is None:
            self.record_trial_failure(cfg, "finished without a checkpoint")
            return None
        with self.writing():
            row = self._trial_row(cfg, checkpoint, run_id)
            self.mlflow.end_run(run_id, "FINISHED", tags={"checkpoint": checkpoint})
            self.open_trial_runs.discard(run_id)
            self.parquet.add("trials", [row])
        s = self.summary
        s.trials_done += 1
        s.trial_time_s += float(row["train_time_s"] or 0.0)
        self.say(
            f"[{s.trials_done + s.trials_cached}/{s.trials_total}] trial "
            f"{describe_trial(cfg):<44} clean {row['test_acc_clean']:.3f}  "
            f"pgd {row['test_acc_pgd']:.3f}  ({row['train_time_s'] or 0:.1f} s)"
        )
        return run_id

    def _trial_row(self, cfg: TrainConfig, checkpoint: str, run_id: str) -> dict[str, Any]:
        history = self.recover_epochs(cfg, checkpoint)
        result = {**(history[-1] if history else {}), **self.last_results.get(cfg.key, {})}
        return {
            **trial_config_row(cfg, self.spec.name),
            "train_loss": result.get("train/loss"),
            "train_acc": result.get("train/acc"),
            "test_acc_clean": result.get("test/acc_clean"),
            "test_acc_pgd": result.get("test/acc_pgd"),
            "epochs_completed": int(result.get("epoch", -1)) + 1,
            "train_time_s": result.get("time_total_s"),
            "checkpoint_path": checkpoint,
            "node_id": result.get("node_id"),
            "proposed_by": self.proposed_by,
            "mlflow_run_id": run_id,
            "completed_at": datetime.now(timezone.utc),
        }

    def record_import(
        self, cfg: TrainConfig, checkpoint: str, origin: dict[str, Any], report: str
    ) -> str:
        """An imported network: its trial's run (tagged imported, ended at once) and its trials
        row, whose training columns are null; returns the run's id. origin (location, format,
        normalisation) goes to the run's params and the row's config_json."""
        key = cfg.key
        config = {**to_canonical(asdict(cfg)), "imported_from": origin}
        with self.writing():
            run_id = self.mlflow.run_for(
                f"trial:{key}",
                name=describe_trial(cfg),
                role="trial",
                parent_run_id=self.study_run_id,
                params=config,
                tags={
                    TRIAL_KEY_TAG: key,
                    PROPOSED_BY_TAG: IMPORTED,
                    "imported": "true",
                    "checkpoint_sha256": getattr(cfg, "sha256", ""),
                },
            )
            self.trial_runs[key] = run_id
            self.mlflow.end_run(run_id, "FINISHED", tags={"checkpoint": checkpoint})
            row = {
                **trial_config_row(cfg, self.spec.name),
                "config_json": json.dumps(config, sort_keys=True),
                "checkpoint_path": checkpoint,
                "proposed_by": IMPORTED,
                "mlflow_run_id": run_id,
                "completed_at": datetime.now(timezone.utc),
            }
            self.parquet.add("trials", [row])
        s = self.summary
        s.trials_done += 1
        self.say(
            f"[{s.trials_done + s.trials_cached}/{s.trials_total}] imported "
            f"{describe_trial(cfg)}  ({report})"
        )
        return run_id

    def record_trial_failure(self, cfg: TrainConfig, why: str) -> None:
        run_id = self.trial_run(cfg)
        with self.writing():
            self.mlflow.mark_failed(run_id, why)
            self.open_trial_runs.discard(run_id)
        self.summary.trials_failed += 1
        self.summary.failures.append(f"trial {describe_trial(cfg)}: {why}")
        self.say(f"  FAILED trial {describe_trial(cfg)}: {why}")

    # ----- evaluations ------------------------------------------------------------------------
    def record_evaluations(self, finished: Iterable[Finished]) -> None:
        """The run and row of each evaluation that returned, or its failure."""
        for done in finished:
            if done.error is not None:
                self.record_eval_failure(done.pending, done.error)
            else:
                assert done.result is not None
                self.record_eval(done.pending, done.result)

    @contextmanager
    def eval_logging(self) -> Iterator[None]:
        """A write of an evaluation's records; its MLflow time counts as the evaluations' (their
        rows' parquet time is counted per table when the buffers are written)."""
        start = self.mlflow.client.seconds
        try:
            with self.writing():
                yield
        finally:
            self._eval_mlflow_s += self.mlflow.client.seconds - start

    def evaluation_run(self, ev: PendingEval, metrics: dict[str, float] | None = None) -> str:
        """The evaluation's MLflow run, under its trial's run (the study's for a baseline):
        the one path of both a result and a failure."""
        task, row = ev.planned.task, ev.planned.row
        tags = {EVAL_KEY_TAG: task.eval_key, "evaluation": task.kind}
        if row.get("trial_key"):
            tags[TRIAL_KEY_TAG] = row["trial_key"]
        return self.mlflow.run_for(
            f"eval:{task.eval_key}",
            name=ev.planned.name,
            role="evaluation",
            parent_run_id=ev.trial_run_id or self.study_run_id,
            params=evaluation_params(task),
            tags=tags,
            metrics=metrics,
        )

    def record_eval(self, ev: PendingEval, result: dict[str, Any]) -> None:
        """The evaluation's run (its metrics also on its trial's run), artifacts and row."""
        kind = EVALUATIONS[ev.planned.task.kind]
        with self.eval_logging():
            metrics = kind.metrics(ev.planned.row, result)
            run_id = self.evaluation_run(ev, metrics)
            context = ArtifactContext(self.results_dir, self.scratch())
            for artifact in kind.artifacts(context, ev.planned.task, result):
                self.mlflow.log_artifact(run_id, artifact)
            self.mlflow.end_run(run_id, "FINISHED")
            if ev.trial_run_id is not None and kind.trial_prefix:
                # On the trial's run too: sent with the next periodic flush, in one batch.
                mirrored = {k: v for k, v in metrics.items() if k.startswith(kind.trial_prefix)}
                self.mlflow.log_metrics(ev.trial_run_id, mirrored)
            row = {**ev.planned.row, **result, "mlflow_run_id": run_id}
            self.parquet.add(ev.planned.table, [row])
        self.summary.evals_done += 1
        self.summary.eval_time_s += float(result.get("wall_time_s") or 0.0)
        self.say(f"  eval  {ev.planned.name:<40} {kind.summary(result)}")

    def record_eval_failure(self, ev: PendingEval, exc: BaseException) -> None:
        with self.eval_logging():
            self.mlflow.mark_failed(self.evaluation_run(ev), str(exc))
        self.summary.evals_failed += 1
        self.summary.failures.append(f"evaluation {ev.planned.name}: {_last_line(exc)}")
        self.say(f"  FAILED eval {ev.planned.name}: {_last_line(exc)}")

    def scratch(self) -> Path:
        """A local folder for copies of logged files, removed when the recorder goes."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="atsweep-")
        return Path(self._scratch.name)
