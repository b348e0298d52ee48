"""The Ray side of the trainables: Tune's function trainable and the evaluation task.

This is the only module of `trainables` that imports ray. Each worker gets as many torch threads
as the CPUs Ray allotted it, so concurrent trials never oversubscribe the cores. ray.tune is
imported where a trial needs it, so that an evaluation worker does not pay for it.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch

from trainables import storage
from trainables.checkpoint import find_latest_valid_checkpoint
from trainables.config import EvalTask, LoadRequest, TrainConfig
from trainables.data import build_dataset
from trainables.evals import evaluate_transfer, run_evaluation
from trainables.payload import TransferObjective, TrialPayload
from trainables.training import run_training

logger = logging.getLogger(__name__)


class TuneReporter:
    """Reports a training epoch's metrics and checkpoint to Tune.

    A search trial's last epoch also carries its transfer objectives (objective/transfer/ID),
    computed here from that epoch's checkpoint so that the sampler sees them.
    """

    def __init__(
        self,
        cfg: TrainConfig | None = None,
        objectives: tuple[TransferObjective, ...] = (),
        load: LoadRequest | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg, self.objectives = cfg, objectives
        self.load, self.device = load or LoadRequest(), device

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Which Ray node trained it: kept in the trials table.
        node = ray.get_runtime_context().get_node_id()
        # Every result names every objective (Tune checks); only the last epoch's are values.
        extra = {o.metric: math.nan for o in self.objectives}
        last = self.cfg is not None and int(metrics.get("epoch", -1)) == self.cfg.optim.epochs - 1
        if last and checkpoint_dir is not None:
            extra = self.objective_metrics(checkpoint_dir)
        tune.report({**metrics, **extra, "node_id": node}, checkpoint=checkpoint)

    def objective_metrics(self, checkpoint_dir: Path) -> dict[str, float]:
        assert self.cfg is not None
        out = {}
        for objective in self.objectives:
            result = evaluate_transfer(
                self.cfg,
                checkpoint_dir,
                objective.target,
                self.cfg.data,
                objective.probe,
                self.load,
                self.device,
            )
            out[objective.metric] = float(result["test_acc"])
        return out


def configure_worker() -> torch.device:
    """torch threads = CPUs Ray allotted this worker; CUDA when a GPU was allotted."""
    # Ray logs every persisted checkpoint at INFO; a study reports progress itself.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    if assigned.get("GPU", 0) > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def find_resume_checkpoint(payload: TrialPayload) -> Path | None:
    """The newest checkpoint of this trial that passes its checksums, or None.

    Looked for in the trial's own folder (Tune's checkpoint after a worker failure) and in the
    folders of earlier attempts at the same trial_key (a study re-run after its driver died).
    Folders on remote storage (s3://...) are downloaded first. A corrupted newer checkpoint is
    skipped with a warning naming the bad file.
    """
    from ray import tune

    locations: list[str] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        path = checkpoint.path.rstrip("/")
        locations.append(storage.to_location(checkpoint.filesystem, path.rsplit("/", 1)[0]))
    locations += list(payload.resume_dirs)
    dirs = [_local_attempt(location) for location in dict.fromkeys(locations)]
    found, problems = find_latest_valid_checkpoint(dirs)
    for problem in problems:
        logger.warning(problem)
        print(f"WARNING: {problem}", file=sys.stderr, flush=True)
    return found


def _local_attempt(location: str) -> Path:
    """A trial folder on this machine: itself, or a download of its checkpoint_* folders."""
    if not storage.is_remote(location):
        return Path(location)
    scratch = Path(tempfile.mkdtemp(prefix="atsweep-resume-"))
    for name, is_dir in storage.list_dir(location):
        if is_dir and name.startswith("checkpoint_"):
            storage.local_copy(storage.join(location, name), scratch)
    return scratch


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: train one grid cell, resuming from its newest valid checkpoint."""
    device = configure_worker()
    payload = TrialPayload.from_tune(config)
    cfg, load = payload.train_config(config), payload.load
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download, load.workers)
    resume = find_resume_checkpoint(payload)
    reporter = TuneReporter(cfg, payload.objectives, load, device)
    run_training(
        cfg, splits, reporter, device=device, resume_from=resume, options=payload.run_options
    )


def run_eval_task(task: EvalTask) -> dict[str, Any]:
    """One evaluation in a Ray task: threads set to the task's CPUs, on its GPU if it has one.

    A checkpoint on remote storage is downloaded first; an artifact bound for remote storage
    (the inversion grid) is written locally, then uploaded.
    """
    device = configure_worker()
    with tempfile.TemporaryDirectory(prefix="atsweep-eval-") as scratch:
        local = task
        if task.checkpoint and storage.is_remote(task.checkpoint):
            local = replace(
                local, checkpoint=str(storage.local_copy(task.checkpoint, Path(scratch)))
            )
        remote_artifact = (
            task.artifact_path if storage.is_remote(task.artifact_path or "") else None
        )
        if remote_artifact:
            local = replace(local, artifact_path=str(Path(scratch) / "grid.png"))
        result = run_evaluation(local, device)
        if remote_artifact and result.get("grid_path"):
            storage.upload_file(Path(result["grid_path"]), remote_artifact)
            result["grid_path"] = remote_artifact
    return result


evaluate_remote = ray.remote(run_eval_task)
