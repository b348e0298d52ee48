"""Evaluations of a trained network, each a pure function of configs and a checkpoint path.

These are what a study fans out as each training trial finishes (PAPER.md sections 3-4):
linear transfer to a target, the raw-pixel and random-init baselines, and the Fisher traces.
Each returns a flat dict of results; the study layer adds keys and writes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.checkpoint import load_checkpoint
from trainables.config import DataConfig, DatasetRef, FisherConfig, ProbeConfig, TrainConfig
from trainables.data import DEFAULT_LOAD, LoadRequest, build_dataset, get_dataset_info
from trainables.evals.fisher import compute_input_fisher, compute_weight_fisher
from trainables.evals.transfer import ProbeResult, run_raw_pixel_probe, run_transfer
from trainables.models import Classifier, ModelInput, build_model


def source_num_classes(ref: DatasetRef) -> int:
    """How many classes a source (with its class subset) has: the size of the model's head."""
    return len(ref.classes) if ref.classes is not None else get_dataset_info(ref.name).num_classes


def build_untrained_model(cfg: TrainConfig) -> Classifier:
    """cfg's architecture for its source, initialised from cfg.seed, without loading data."""
    info = get_dataset_info(cfg.source.name)
    torch.manual_seed(cfg.seed)
    inputs = ModelInput(info.channels, info.size, info.mean, info.std)
    return build_model(cfg.arch, inputs, source_num_classes(cfg.source))


def source_format(cfg: TrainConfig) -> tuple[int, int]:
    """(channels, size) of the images the trial's network was trained on."""
    info = get_dataset_info(cfg.source.name)
    return info.channels, info.size


def load_trained_model(
    cfg: TrainConfig, checkpoint_dir: Path | str, device: torch.device | str = "cpu"
) -> Classifier:
    """The trained network of a trial from its checkpoint (checksums verified), in eval mode."""
    model = build_untrained_model(cfg).to(device)
    load_checkpoint(Path(checkpoint_dir), model)
    return model.eval()


def _probe_row(result: ProbeResult) -> dict[str, Any]:
    return {
        "test_acc": result.test_acc,
        "train_acc": result.train_acc,
        "val_acc": result.val_acc,
        "c": result.c,
        "n_train": result.n_train,
        "n_test": result.n_test,
        "feature_dim": result.feature_dim,
    }


def evaluate_transfer(
    cfg: TrainConfig,
    checkpoint_dir: Path | str,
    target: DatasetRef,
    data: DataConfig,
    probe: ProbeConfig,
    load: LoadRequest = DEFAULT_LOAD,
) -> dict[str, Any]:
    """Linear transfer of a trained network to one target."""
    model = load_trained_model(cfg, checkpoint_dir)
    splits = build_dataset(target, data, load.root, load.download)
    return _probe_row(run_transfer(model, splits, probe, cfg.seed, source_format(cfg)))


def evaluate_random_init(
    cfg: TrainConfig, target: DatasetRef, probe: ProbeConfig, load: LoadRequest = DEFAULT_LOAD
) -> dict[str, Any]:
    """The random-init baseline: the same probe on an untrained network of cfg's architecture."""
    model = build_untrained_model(cfg)
    splits = build_dataset(target, cfg.data, load.root, load.download)
    return _probe_row(run_transfer(model, splits, probe, cfg.seed, source_format(cfg)))


def evaluate_raw_pixels(
    target: DatasetRef, data: DataConfig, probe: ProbeConfig, load: LoadRequest = DEFAULT_LOAD
) -> dict[str, Any]:
    """The raw-pixel baseline of one target."""
    splits = build_dataset(target, data, load.root, load.download)
    return _probe_row(run_raw_pixel_probe(splits, probe))


def evaluate_fisher(
    cfg: TrainConfig,
    checkpoint_dir: Path | str,
    fisher: FisherConfig,
    load: LoadRequest = DEFAULT_LOAD,
) -> dict[str, Any]:
    """Input and weight Fisher traces on the first num_samples source test images."""
    model = load_trained_model(cfg, checkpoint_dir)
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download)
    n = min(fisher.num_samples, len(splits.test))
    x = splits.test.get_batch(np.arange(n))
    y = torch.from_numpy(splits.test.targets[:n])
    gen = torch.Generator().manual_seed(fisher.seed)
    inp = compute_input_fisher(
        model,
        x,
        method=fisher.input_method,
        probes=fisher.probes,
        sigma=fisher.sigma,
        generator=gen,
    )
    wf = compute_weight_fisher(model, x, y, fisher_type=fisher.weight_fisher, generator=gen)
    return {
        "n_samples": len(x),
        "sigma": fisher.sigma,
        "input_method": fisher.input_method,
        "probes": fisher.probes if fisher.input_method == "hutchinson" else 0,
        "input_trace": inp.mean,
        "input_trace_stderr": inp.stderr,
        "weight_fisher": fisher.weight_fisher,
        "weight_trace": wf.trace.mean,
        "weight_trace_stderr": wf.trace.stderr,
        "weight_trace_per_layer": wf.per_layer,
    }


EVAL_KINDS = ("transfer", "random_init", "raw_pixels", "fisher")


@dataclass(frozen=True)
class EvalTask:
    """One evaluation to run: what kind, on which trained network (checkpoint), with what."""

    kind: str
    eval_key: str
    data: DataConfig
    train: TrainConfig | None = None
    checkpoint: str | None = None
    target: DatasetRef | None = None
    probe: ProbeConfig | None = None
    fisher: FisherConfig | None = None
    load: LoadRequest = field(default_factory=LoadRequest)


def run_evaluation(task: EvalTask) -> dict[str, Any]:
    """Run one EvalTask and return its result row (with wall_time_s)."""
    t0 = time.perf_counter()
    if task.kind == "transfer":
        assert task.train and task.checkpoint and task.target and task.probe
        result = evaluate_transfer(
            task.train, task.checkpoint, task.target, task.data, task.probe, task.load
        )
    elif task.kind == "random_init":
        assert task.train and task.target and task.probe
        result = evaluate_random_init(task.train, task.target, task.probe, task.load)
    elif task.kind == "raw_pixels":
        assert task.target and task.probe
        result = evaluate_raw_pixels(task.target, task.data, task.probe, task.load)
    elif task.kind == "fisher":
        assert task.train and task.checkpoint and task.fisher
        result = evaluate_fisher(task.train, task.checkpoint, task.fisher, task.load)
    else:
        raise ValueError(f"unknown evaluation kind {task.kind!r}: choose one of {EVAL_KINDS}")
    result["wall_time_s"] = time.perf_counter() - t0
    return result
