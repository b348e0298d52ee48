"""The Ray side of the trainables: Tune's function trainable and the evaluation task.

This is the only module of `trainables` that imports ray. Each worker gets as many torch threads
as the CPUs Ray allotted it, so concurrent trials never oversubscribe the cores.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables.config import RunOptions, train_config_from_dict
from trainables.data import LoadRequest, build_dataset
from trainables.evals import EvalTask, run_evaluation
from trainables.training import run_training


class TuneReporter:
    """Reports a training epoch's metrics and checkpoint to Tune."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


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


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: train one grid cell, resuming from Tune's checkpoint if any."""
    device = configure_worker()
    cfg = train_config_from_dict(config["train"]["config"])
    load = LoadRequest(**config.get("load", {}))
    options = RunOptions(**config.get("run_options", {}))
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_training(cfg, splits, TuneReporter(), device=device, options=options)
        return
    with checkpoint.as_directory() as resume_dir:
        run_training(
            cfg,
            splits,
            TuneReporter(),
            device=device,
            resume_from=Path(resume_dir),
            options=options,
        )


def run_eval_task(task: EvalTask) -> dict[str, Any]:
    """One evaluation in a Ray task, with threads set to the task's CPUs."""
    configure_worker()
    return run_evaluation(task)


evaluate_remote = ray.remote(run_eval_task)
