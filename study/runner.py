"""SweepSpec -> Ray Tune: trains the grid, fans out evaluations as trials finish, skips cached keys.

The driver is the single writer: a Tune callback turns each trial's per-epoch results into
`epochs` rows and MLflow metrics, and as each trial completes it submits that trial's evaluations
as Ray tasks at once (no barrier across the grid); their results come back to the driver, which
writes `transfer` and `fisher` rows and nested MLflow runs. Anything whose key is already in the
tables is not computed again, so re-running a study resumes it and an extended grid runs only
its new cells.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.plan import PlannedEval, plan_baselines, plan_trial_evaluations
from study.sinks.mlflow import MlflowSink
from study.sinks.parquet import ParquetSink, read_table
from study.spec import SpecError, SweepSpec
from trainables import storage
from trainables.config import TrainConfig, to_canonical, train_config_from_dict, trial_config
from trainables.data import LoadRequest
from trainables.evals import EvalTask

Printer = Callable[[str], None]


IDLE_WORKER_KEEP_MS = 3_600_000
# Buffered epoch rows and metrics go out this often (and when a trial ends): each flush is a
# parquet part of the epochs table and one MLflow call per running trial.
FLUSH_EVERY_S = 10.0


def configure_tune_environment() -> None:
    """Tune's settings for a study, set by Study.run before Ray starts (a local Ray's workers
    inherit them), not on import: a process that only imports this module keeps Tune's defaults.

    Tune's own CSV/JSON/TensorBoard loggers duplicate what the sinks write; the trial processes
    keep the working directory so that relative data roots resolve as the user wrote them; every
    epoch's checkpoint forces an experiment snapshot, expected here and not a bottleneck."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The evaluations wait while Tune's trial actors hold every CPU. By default a local Ray
    # kills an idle worker after 1 s once the node has more workers than CPUs, so each
    # evaluation then starts a fresh worker that imports torch again (3-5 CPU-s each); kept
    # alive, the workers that ran the baselines run the evaluations. Ray still kills idle
    # workers first under memory pressure, and GPU tasks never reuse a worker (max_calls=1).
    os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", str(IDLE_WORKER_KEEP_MS))


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


def earlier_attempts(ray_dir: str, trial_key: str) -> list[str]:
    """Folders of earlier attempts at a trial (whose checkpoints a new attempt resumes from)."""
    return [
        storage.join(ray_dir, name)
        for name, is_dir in storage.list_dir(ray_dir)
        if is_dir and name.startswith(trial_key)
    ]


RUN_PACKAGES = (
    *("atsweep", "torch", "torchvision", "ray", "mlflow", "optuna", "pyarrow", "pandas"),
    *("numpy", "safetensors"),
)


def describe_trial(cfg: TrainConfig) -> str:
    """A readable one-line name of a grid cell."""
    return (
        f"{cfg.source.id} {cfg.arch.id} {cfg.norm} {cfg.attack.id} eps={cfg.eps:g} seed={cfg.seed}"
    )


def trial_config_row(cfg: TrainConfig, study: str) -> dict[str, Any]:
    """The config columns of a trials row."""
    return {
        "trial_key": cfg.key,
        "study": study,
        "source": cfg.source.id,
        "source_dataset": cfg.source.name,
        "source_classes": list(cfg.source.classes) if cfg.source.classes is not None else None,
        "arch": cfg.arch.id,
        "arch_name": cfg.arch.name,
        "width": cfg.arch.width,
        "norm": cfg.norm,
        "attack": cfg.attack.id,
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


@dataclass
class PendingEval:
    """An evaluation submitted to Ray, with what its rows and runs need."""

    task: EvalTask
    table: str
    row: dict[str, Any]
    name: str
    parent_run_id: str | None
    trial_run_id: str | None


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


class Study:
    """One study on one Ray cluster: the sinks, the evaluation queue and the Tune callback."""

    def __init__(self, spec: SweepSpec, printer: Printer = print) -> None:
        self.spec = spec
        self.say = printer
        self.results_dir = spec.results_dir()
        root = str(Path(spec.data.root).expanduser().resolve()) if spec.data.root else None
        self.load = LoadRequest(root=root, download=spec.data.download)
        check_data(spec, self.load)
        self.parquet = ParquetSink(storage.join(self.results_dir, "tables"))
        self.mlflow = MlflowSink(
            spec.tracking_uri(), spec.name, storage.join(self.results_dir, "mlartifacts")
        )
        self.summary = StudySummary()
        self.configs = spec.expand()
        self.summary.trials_total = spec.search.num_trials if spec.search else len(self.configs)
        self.proposed_by = spec.search.proposed_by() if spec.search else "grid"
        self.pending: dict[Any, PendingEval] = {}
        self.trial_runs: dict[str, str] = {}
        self.parent_run_id = ""
        self.spec_path: Path | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    # ----- MLflow hierarchy -----------------------------------------------------------------
    def open_parent_run(self) -> None:
        """Once per run: mark runs an earlier driver left RUNNING, then open the study's run."""
        if self.parent_run_id:
            return
        orphaned = self.mlflow.end_orphaned_runs()
        if orphaned:
            self.say(f"marked {orphaned} MLflow runs KILLED: left RUNNING by an earlier driver")
        self.start_parent_run(self.spec_path)

    def start_parent_run(self, spec_path: Path | None) -> None:
        self.parent_run_id = self.mlflow.run_for(
            f"study:{self.spec.name}",
            name=self.spec.name,
            role="study",
            parent_run_id=None,
            params=self.spec.model_dump(mode="json"),
            tags={"results_dir": self.results_dir},
        )
        if spec_path is not None:
            self.mlflow.log_artifact(self.parent_run_id, spec_path)

    def trial_run(self, cfg: TrainConfig) -> str:
        key = cfg.key
        if key not in self.trial_runs:
            self.trial_runs[key] = self.mlflow.run_for(
                f"trial:{key}",
                name=describe_trial(cfg),
                role="trial",
                parent_run_id=self.parent_run_id,
                params=to_canonical(asdict(cfg)),
                tags={"trial_key": key, "atsweep.proposed_by": self.proposed_by},
            )
        return self.trial_runs[key]

    # ----- evaluations ----------------------------------------------------------------------
    def eval_tasks_for(
        self, cfg: TrainConfig, checkpoint: str, trial_run_id: str
    ) -> list[PendingEval]:
        """The evaluations of one trained network that are not in the tables yet."""
        out: list[PendingEval] = []
        for p in plan_trial_evaluations(self.spec, cfg, checkpoint, self.results_dir, self.load):
            if self.parquet.has(p.table, p.task.eval_key):
                self.summary.evals_cached += 1
                continue
            out.append(PendingEval(p.task, p.table, p.row, p.name, trial_run_id, trial_run_id))
        return out

    def baseline_tasks(self) -> list[PlannedEval]:
        """The transfer baselines not in the tables yet (logged under the study's run)."""
        return [
            p
            for p in plan_baselines(self.spec, self.load)
            if not self.parquet.has(p.table, p.task.eval_key)
        ]

    def submit(self, evals: list[PendingEval]) -> None:
        if not evals:
            return
        from trainables.tune_entry import evaluate_remote

        options = {
            "num_cpus": self.spec.resources.cpus_per_eval,
            "num_gpus": self.spec.resources.gpus_per_eval,
            "max_retries": self.spec.resources.max_failures,
            "retry_exceptions": True,
        }
        for ev in evals:
            ref = evaluate_remote.options(**options).remote(ev.task)
            self.pending[ref] = ev

    def harvest(self, timeout: float = 0.0) -> None:
        """Record every finished evaluation (waiting up to timeout for the first one)."""
        if not self.pending:
            return
        import ray

        while self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
            if not done:
                return
            ref = done[0]
            ev = self.pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # a task that failed after its retries: record, go on
                self.record_eval_failure(ev, exc)
            else:
                self.record_eval(ev, result)
            timeout = 0.0

    @contextmanager
    def eval_logging(self) -> Iterator[None]:
        """Counts the driver's MLflow and parquet time inside the block as the evaluations'."""
        start = self.mlflow.client.seconds + self.parquet.seconds
        try:
            yield
        finally:
            now = self.mlflow.client.seconds + self.parquet.seconds
            self.summary.eval_logging_s += now - start

    def record_eval(self, ev: PendingEval, result: dict[str, Any]) -> None:
        with self.eval_logging():
            self.log_eval(ev, result)
        self.summary.evals_done += 1
        self.summary.eval_time_s += float(result.get("wall_time_s") or 0.0)
        self.say(f"  eval  {ev.name:<40} {self.describe_result(ev, result)}")

    def log_eval(self, ev: PendingEval, result: dict[str, Any]) -> None:
        """The evaluation's MLflow run (and its metrics on the trial's run) and its row."""
        metrics, prefix = self.eval_metrics(ev, result)
        run_id = self.mlflow.run_for(
            f"eval:{ev.task.eval_key}",
            name=ev.name,
            role="evaluation",
            parent_run_id=ev.parent_run_id,
            params=self.eval_params(ev.task),
            tags={
                "eval_key": ev.task.eval_key,
                "evaluation": ev.task.kind,
                **({"trial_key": ev.row["trial_key"]} if ev.row.get("trial_key") else {}),
            },
            metrics=metrics,
        )
        for artifact in self.eval_artifacts(ev, result):
            self.mlflow.log_artifact(run_id, artifact)
        self.mlflow.end_run(run_id, "FINISHED")
        if ev.trial_run_id is not None:
            # On the trial's run too: sent with the next periodic flush, in one batch.
            self.mlflow.log_metrics(
                ev.trial_run_id, {k: v for k, v in metrics.items() if k.startswith(prefix)}
            )
        row = {**ev.row, **result, "mlflow_run_id": run_id}
        self.parquet.append(ev.table, [row])

    def eval_artifacts(self, ev: PendingEval, result: dict[str, Any]) -> list[Path]:
        """Local copies of the files logged with an evaluation's run: the inversion grid, the
        per-layer Fisher traces (written to the results folder too)."""
        if ev.task.kind == "inversion" and result.get("grid_path"):
            try:
                return [storage.local_copy(result["grid_path"], self.scratch())]
            except FileNotFoundError:
                return []
        if ev.task.kind == "fisher":
            location = storage.join(
                self.results_dir, "artifacts", "fisher", f"{ev.task.eval_key}.json"
            )
            local = self.scratch() / f"{ev.task.eval_key}.json"
            local.write_text(json.dumps(result["weight_trace_per_layer"], indent=2, sort_keys=True))
            storage.upload_file(local, location)
            return [local]
        return []

    def scratch(self) -> Path:
        """A local folder for downloaded copies, removed when the study object goes."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="atsweep-")
        return Path(self._scratch.name)

    def eval_metrics(self, ev: PendingEval, result: dict[str, Any]) -> tuple[dict[str, float], str]:
        """The evaluation's metrics (also logged on its trial's run, under the prefix)."""
        kind = ev.task.kind
        if kind == "fisher":
            metrics = {
                "fisher/input_trace": result["input_trace"],
                "fisher/input_trace_stderr": result["input_trace_stderr"],
                "fisher/input_eig": result["input_eig"],
                "fisher/weight_trace": result["weight_trace"],
                "fisher/weight_trace_stderr": result["weight_trace_stderr"],
            }
            for layer, value in result["weight_trace_per_layer"].items():
                metrics[f"fisher/weight_trace/{layer}"] = value
            return metrics, "fisher/"
        if kind == "robustness":
            name = f"robust/{result['eval_attack']}_eps{result['eval_eps']:.4g}"
            return {
                f"{name}/acc": result["robust_acc"],
                f"{name}/clean_acc": result["clean_acc"],
            }, "robust/"
        if kind == "inversion":
            name = f"inversion/{ev.row['variant']}"
            return {
                f"{name}/psnr": result["psnr"],
                f"{name}/ssim": result["ssim"],
                f"{name}/relative_error": result["relative_error"],
            }, "inversion/"
        target = ev.row["target"]
        name = {
            "transfer": "acc",
            "finetune": "acc_finetune",
            "raw_pixels": "acc_raw_pixels",
            "random_init": "acc_random_init",
        }[kind]
        metrics = {f"transfer/{target}/{name}": result["test_acc"]}
        if result.get("c") is not None:
            metrics[f"transfer/{target}/c"] = result["c"]
        return metrics, "transfer/"

    @staticmethod
    def eval_params(task: EvalTask) -> dict[str, Any]:
        params: dict[str, Any] = {"evaluation": task.kind}
        for name in ("target", "probe", "fisher", "robustness", "inversion", "finetune"):
            value = getattr(task, name)
            if value is not None:
                params[name] = to_canonical(asdict(value))
        return params

    @staticmethod
    def describe_result(ev: PendingEval, result: dict[str, Any]) -> str:
        kind = ev.task.kind
        if kind == "fisher":
            return f"input {result['input_trace']:.4g}  weight {result['weight_trace']:.4g}"
        if kind == "robustness":
            return f"robust acc {result['robust_acc']:.3f} (clean {result['clean_acc']:.3f})"
        if kind == "inversion":
            return f"PSNR {result['psnr']:.1f} dB  SSIM {result['ssim']:.3f}"
        if kind == "finetune":
            return f"acc {result['test_acc']:.3f}"
        return f"acc {result['test_acc']:.3f} (C={result['c']:g})"

    def record_eval_failure(self, ev: PendingEval, exc: BaseException) -> None:
        with self.eval_logging():
            run_id = self.mlflow.run_for(
                f"eval:{ev.task.eval_key}",
                name=ev.name,
                role="evaluation",
                parent_run_id=ev.parent_run_id,
                params=self.eval_params(ev.task),
                tags={"eval_key": ev.task.eval_key, "evaluation": ev.task.kind},
            )
            self.mlflow.set_tags(run_id, {"error": str(exc)[:5000]})
            self.mlflow.end_run(run_id, "FAILED")
        self.summary.evals_failed += 1
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        self.summary.failures.append(f"evaluation {ev.name}: {first_line}")
        self.say(f"  FAILED eval {ev.name}: {first_line}")

    # ----- trials ---------------------------------------------------------------------------
    def record_epoch(self, cfg: TrainConfig, result: dict[str, Any]) -> None:
        """Buffer one epoch's row and metrics (written at the next flush)."""
        epoch = int(result["epoch"])
        metrics = {
            k: v
            for k, v in result.items()
            if "/" in k and isinstance(v, (int, float)) and not math.isnan(v)
        }
        self.mlflow.log_metrics(self.trial_run(cfg), metrics, step=epoch)
        self.epoch_buffer.append(
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
        )
        self.last_results[cfg.key] = result

    def recover_epochs(self, cfg: TrainConfig, checkpoint: str) -> list[dict[str, Any]]:
        """Epochs in the final checkpoint's history that no table holds yet (their reports
        were lost with an earlier driver) are recorded now; returns the whole history."""
        manifest = json.loads(storage.read_bytes(storage.join(checkpoint, "manifest.json")))
        history: list[dict[str, Any]] = manifest.get("history", [])
        buffered = {row["epoch"] for row in self.epoch_buffer if row["trial_key"] == cfg.key}
        for metrics in history:
            epoch = int(metrics["epoch"])
            if not self.parquet.has("epochs", cfg.key, epoch) and epoch not in buffered:
                self.record_epoch(cfg, metrics)
        return history

    def flush(self) -> None:
        if self.epoch_buffer:
            self.parquet.append("epochs", self.epoch_buffer)
            self.epoch_buffer = []
        self.mlflow.flush()
        self.last_flush = time.monotonic()

    def record_trial_done(self, cfg: TrainConfig, checkpoint: str | None) -> None:
        run_id = self.trial_run(cfg)
        if checkpoint is None:
            self.record_trial_failure(cfg, "finished without a checkpoint")
            return
        history = self.recover_epochs(cfg, checkpoint)
        result = {**(history[-1] if history else {}), **self.last_results.get(cfg.key, {})}
        self.flush()
        row = {
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
        self.mlflow.end_run(run_id, "FINISHED", tags={"checkpoint": checkpoint})
        self.parquet.append("trials", [row])
        self.summary.trials_done += 1
        self.summary.trial_time_s += float(row["train_time_s"] or 0.0)
        done = self.summary.trials_done + self.summary.trials_cached
        self.say(
            f"[{done}/{self.summary.trials_total}] trial {describe_trial(cfg):<44} "
            f"clean {row['test_acc_clean']:.3f}  pgd {row['test_acc_pgd']:.3f}  "
            f"({row['train_time_s'] or 0:.1f} s)"
        )
        self.submit(self.eval_tasks_for(cfg, checkpoint, run_id))

    def record_trial_failure(self, cfg: TrainConfig, why: str) -> None:
        self.flush()
        run_id = self.trial_run(cfg)
        self.mlflow.set_tags(run_id, {"error": why[:5000]})
        self.mlflow.end_run(run_id, "FAILED")
        self.summary.trials_failed += 1
        self.summary.failures.append(f"trial {describe_trial(cfg)}: {why}")
        self.say(f"  FAILED trial {describe_trial(cfg)}: {why}")

    def check_cluster_fits(self, address: str | None) -> None:
        """A request no node can hold would wait forever: end the study run with the error.

        A local Ray (no address) is checked against this machine before it is started."""
        from study.resources import (
            check_resources,
            node_type_of_this_machine,
            node_types_from_ray,
        )

        if address is None:
            where, types = "the local Ray on this machine", [node_type_of_this_machine()]
        else:
            where, types = "the Ray cluster", node_types_from_ray()
        try:
            check_resources(self.spec.resources, types, where)
        except SpecError as exc:
            self.open_parent_run()
            self.mlflow.set_tags(self.parent_run_id, {"error": str(exc)})
            self.mlflow.end_run(self.parent_run_id, "FAILED")
            self.flush()
            raise

    def write_study_info(self, last_run: dict[str, Any] | None = None) -> None:
        """RESULTS/study.json: the spec and the software of this run, for reports; at the end
        of a run also what it did and where its time went (last_run)."""
        from analysis.report import software_versions

        info: dict[str, Any] = {
            "name": self.spec.name,
            "tracking_uri": self.spec.tracking_uri(),
            "spec": self.spec.model_dump(mode="json"),
            "versions": software_versions(RUN_PACKAGES),
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if last_run is not None:
            info["last_run"] = last_run
        text = json.dumps(info, indent=2, sort_keys=False)
        storage.write_bytes(storage.join(self.results_dir, "study.json"), text.encode())

    # ----- the whole study ------------------------------------------------------------------
    def run(self, address: str | None = None, spec_path: Path | None = None) -> StudySummary:
        configure_tune_environment()
        t0 = time.monotonic()
        self.epoch_buffer: list[dict[str, Any]] = []
        self.last_results: dict[str, dict[str, Any]] = {}
        self.last_flush = time.monotonic()
        self.spec_path = spec_path
        self.write_study_info()

        todo: list[TrainConfig] = []
        cached_rows = {
            r["trial_key"]: r
            for r in read_table(storage.join(self.parquet.tables_dir, "trials"), "trials")
            .select(["trial_key", "checkpoint_path", "mlflow_run_id", "config_json", "proposed_by"])
            .to_pylist()
        }
        baselines = self.baseline_tasks()
        evals: list[PendingEval] = []
        for cfg in self.configs:
            row = cached_rows.get(cfg.key)
            if row is None:
                todo.append(cfg)
                continue
            self.summary.trials_cached += 1
            self.trial_runs[cfg.key] = row["mlflow_run_id"]
            evals += self.eval_tasks_for(cfg, row["checkpoint_path"], row["mlflow_run_id"])
        if self.spec.search is None:
            self.say(
                f"study {self.spec.name}: {len(self.configs)} trials "
                f"({self.summary.trials_cached} cached, {len(todo)} to run), "
                f"{len(baselines) + len(evals)} evaluations queued now"
            )
        else:
            # Evaluations of the search's earlier trials that an earlier driver did not finish.
            for row in cached_rows.values():
                if row["proposed_by"] == self.proposed_by and row["config_json"]:
                    cfg = train_config_from_dict(json.loads(row["config_json"]))
                    self.trial_runs[cfg.key] = row["mlflow_run_id"]
                    evals += self.eval_tasks_for(cfg, row["checkpoint_path"], row["mlflow_run_id"])
            self.say(
                f"study {self.spec.name}: {len(baselines) + len(evals)} evaluations queued now"
            )
        search_budget = search_done = 0
        if self.spec.search is not None:
            from study.search import open_optuna_study

            self.optuna_storage, search_done, orphans = open_optuna_study(self.spec)
            search_budget = max(0, self.spec.search.num_trials - search_done)
            self.summary.trials_cached = min(search_done, self.spec.search.num_trials)
            if orphans:
                self.say(f"marked {orphans} Optuna trials FAIL: left RUNNING by an earlier driver")
            self.say(
                f"search {self.spec.search.sampler}: {search_done} of "
                f"{self.spec.search.num_trials} trials done, {search_budget} to propose"
            )
        started_ray = False
        if todo or baselines or evals or search_budget:
            import ray  # not for a re-run that finds everything in the tables

            started_ray = not ray.is_initialized()
        if started_ray:
            if address is None:
                self.check_cluster_fits(None)
            ray.init(address=address, include_dashboard=False, logging_level="ERROR")
            if address is not None:
                self.check_cluster_fits(address)
            # The ResultGrid looks for Tune's own result files, which the sinks replace.
            logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        self.open_parent_run()
        self.submit(
            [
                PendingEval(p.task, p.table, p.row, p.name, self.parent_run_id, None)
                for p in baselines
            ]
            + evals
        )

        if todo or search_budget > 0:
            from ray import tune

            from trainables.tune_entry import train_trial

            res = self.spec.resources
            ray_dir = storage.join(self.results_dir, "ray", self.spec.name)
            attempt = time.strftime("%Y%m%d-%H%M%S")
            # Tune pickles its experiment (these closures too): they capture plain values only.
            is_search = self.spec.search is not None
            trainable = tune.with_resources(
                train_trial, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}
            )
            common = {
                "load": asdict(self.load),
                "run_options": asdict(self.spec.training.run_options()),
            }
            if self.spec.search is None:
                param_space = {
                    "train": tune.grid_search(
                        [
                            {
                                "trial_key": c.key,
                                "config": to_canonical(asdict(c)),
                                "resume_dirs": earlier_attempts(ray_dir, c.key),
                            }
                            for c in todo
                        ]
                    ),
                    **common,
                }
                options: dict[str, Any] = {"max_concurrent_trials": res.max_concurrent_trials}
            else:
                from study.search import (
                    search_param_space,
                    search_train_config,
                    search_tune_options,
                )

                param_space = {
                    "train": search_train_config(self.spec),
                    **search_param_space(self.spec),
                    **common,
                }
                options = {
                    "num_samples": search_budget,
                    **search_tune_options(self.spec, self.optuna_storage, search_done),
                }
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    reuse_actors=res.reuse_actors,
                    # One folder per attempt at a trial: a re-run never writes into the
                    # checkpoints of an earlier attempt, which it may resume from.
                    trial_dirname_creator=lambda t: (
                        f"{trial_config(t.config).key}-{attempt}"
                        + (f"-{t.trial_id}" if is_search else "")
                    ),
                    trial_name_creator=lambda t: describe_trial(trial_config(t.config)),
                    **options,
                ),
                run_config=tune.RunConfig(
                    name=self.spec.name,
                    storage_path=storage.join(self.results_dir, "ray"),
                    verbose=0,
                    callbacks=[StudyCallback(self)],
                    failure_config=tune.FailureConfig(max_failures=res.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                ),
            )
            tuner.fit()
        self.harvest(timeout=0.0)
        while self.pending:
            self.harvest(timeout=5.0)
            if time.monotonic() - self.last_flush > FLUSH_EVERY_S:
                self.flush()
        self.flush()
        if started_ray:
            # Now rather than at exit, where Ray first sleeps 0.5 s for late log lines: every
            # task has returned. A local cluster stops; a remote one only loses this driver.
            ray.shutdown()
        failed = self.summary.trials_failed + self.summary.evals_failed
        self.summary.mlflow_s = self.mlflow.client.seconds
        self.summary.parquet_s = self.parquet.seconds
        self.mlflow.log_metrics(self.parent_run_id, self.timing_metrics())
        self.mlflow.end_run(self.parent_run_id, "FAILED" if failed else "FINISHED")
        self.summary.wall_time_s = time.monotonic() - t0
        summary = asdict(self.summary)
        summary.update(self.summary.shares())
        self.write_study_info(last_run=summary)
        return self.summary

    def timing_metrics(self) -> dict[str, float]:
        s = self.summary
        out = {
            "study/trial_time_s": s.trial_time_s,
            "study/eval_time_s": s.eval_time_s,
            "study/mlflow_s": s.mlflow_s,
            "study/parquet_s": s.parquet_s,
        }
        out.update({f"study/{k}": v for k, v in s.shares().items() if not math.isnan(v)})
        return out


def _make_callback_class() -> type:
    from ray import tune

    class _StudyCallback(tune.Callback):  # type: ignore[misc]
        """Tune's driver-side hooks, forwarded to the Study (the single writer)."""

        def __init__(self, study: Study | None) -> None:
            self.study = study
            self.configs: dict[str, TrainConfig] = {}

        def __reduce__(self) -> tuple[Any, ...]:
            # Tune pickles its callbacks into the experiment state (for Tuner.restore, which a
            # study never uses: a re-run resumes from its tables). The study is not pickled: it
            # holds the sinks and the printer, and `print` stops being picklable once Ray's
            # log thread has replaced builtins.print (its tqdm patch), which made Tuner()
            # fail at random.
            return (type(self), (None,))

        def _cfg(self, trial: Any) -> TrainConfig:
            if trial.trial_id not in self.configs:
                self.configs[trial.trial_id] = trial_config(trial.config)
            return self.configs[trial.trial_id]

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.study.trial_run(self._cfg(trial))

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self.study.record_epoch(self._cfg(trial), result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            checkpoint = None
            if trial.checkpoint is not None:
                checkpoint = storage.to_location(trial.checkpoint.filesystem, trial.checkpoint.path)
            self.study.record_trial_done(self._cfg(trial), checkpoint)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.study.record_trial_failure(self._cfg(trial), describe_trial_error(trial))

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            self.study.harvest(timeout=0.0)
            if time.monotonic() - self.study.last_flush > FLUSH_EVERY_S:
                self.study.flush()

    return _StudyCallback


def _measured(value: Any) -> Any:
    """None for a metric that was not measured (NaN), the value otherwise."""
    return None if isinstance(value, float) and math.isnan(value) else value


def describe_trial_error(trial: Any) -> str:
    """The last line of a failed trial's traceback, and where the whole of it is."""
    error_file = getattr(trial, "error_file", None)
    last = "training failed"
    if error_file and Path(error_file).is_file():
        lines = [ln for ln in Path(error_file).read_text().splitlines() if ln.strip()]
        if lines:
            last = lines[-1].strip()
    return f"{last} (traceback: {error_file})" if error_file else last


def StudyCallback(study: Study) -> Any:  # noqa: N802
    """A Tune callback bound to a study (built lazily so that importing this needs no ray)."""
    return _make_callback_class()(study)
