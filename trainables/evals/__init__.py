"""Evaluations of a trained network, each a pure function of configs and a checkpoint path.

These are what a study fans out as each training trial finishes (PAPER.md sections 3-5):
linear transfer to a target (and full fine-tuning), the raw-pixel and random-init baselines,
the Fisher information of the input and of the weights, robust accuracy, and inversion.
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
from trainables.config import (
    DataConfig,
    DatasetRef,
    FisherConfig,
    ProbeConfig,
    RobustnessConfig,
    TrainConfig,
)
from trainables.data import (
    DEFAULT_LOAD,
    LoadRequest,
    SubsetImageSet,
    build_dataset,
    get_dataset_info,
)
from trainables.evals.finetune import FinetuneConfig, run_finetune
from trainables.evals.fisher import (
    compute_input_fisher,
    compute_input_fisher_eigenvalue,
    compute_weight_fisher,
)
from trainables.evals.inversion import InversionConfig, run_inversion, save_inversion_grid
from trainables.evals.robustness import compute_autoattack_accuracy, compute_robust_accuracy
from trainables.evals.transfer import ProbeResult, run_raw_pixel_probe, run_transfer
from trainables.models import Classifier, ModelInput, build_model

Device = torch.device | str


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
    cfg: TrainConfig, checkpoint_dir: Path | str, device: Device = "cpu"
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
    device: Device = "cpu",
) -> dict[str, Any]:
    """Linear transfer of a trained network to one target."""
    model = load_trained_model(cfg, checkpoint_dir, device)
    splits = build_dataset(target, data, load.root, load.download)
    return _probe_row(run_transfer(model, splits, probe, cfg.seed, source_format(cfg)))


def evaluate_random_init(
    cfg: TrainConfig,
    target: DatasetRef,
    probe: ProbeConfig,
    load: LoadRequest = DEFAULT_LOAD,
    device: Device = "cpu",
) -> dict[str, Any]:
    """The random-init baseline: the same probe on an untrained network of cfg's architecture."""
    model = build_untrained_model(cfg).to(device)
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
    device: Device = "cpu",
) -> dict[str, Any]:
    """Input Fisher (trace, top eigenvalue) of a representation and weight Fisher traces, on the
    first num_samples source test images."""
    model = load_trained_model(cfg, checkpoint_dir, device)
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download)
    n = min(fisher.num_samples, len(splits.test))
    x = splits.test.get_batch(np.arange(n)).to(device)
    y = torch.from_numpy(splits.test.targets[:n]).to(device)
    gen = torch.Generator(device=device).manual_seed(fisher.seed)
    inp = compute_input_fisher(
        model,
        x,
        method=fisher.input_method,
        probes=fisher.probes,
        sigma=fisher.sigma,
        generator=gen,
        layer=fisher.layer,
    )
    eig = None
    if fisher.eigen_iters > 0:
        eig = compute_input_fisher_eigenvalue(
            model,
            x,
            iters=fisher.eigen_iters,
            sigma=fisher.sigma,
            generator=gen,
            layer=fisher.layer,
        )
    wf = compute_weight_fisher(model, x, y, fisher_type=fisher.weight_fisher, generator=gen)
    return {
        "n_samples": len(x),
        "sigma": fisher.sigma,
        "layer": fisher.layer or "penultimate",
        "input_method": fisher.input_method,
        "probes": fisher.probes if fisher.input_method == "hutchinson" else 0,
        "input_trace": inp.mean,
        "input_trace_stderr": inp.stderr,
        "input_eig": eig.mean if eig is not None else None,
        "input_eig_stderr": eig.stderr if eig is not None else None,
        "weight_fisher": fisher.weight_fisher,
        "weight_trace": wf.trace.mean,
        "weight_trace_stderr": wf.trace.stderr,
        "weight_trace_per_layer": wf.per_layer,
    }


def evaluate_robustness(
    cfg: TrainConfig,
    checkpoint_dir: Path | str,
    robustness: RobustnessConfig,
    load: LoadRequest = DEFAULT_LOAD,
    device: Device = "cpu",
) -> dict[str, Any]:
    """Clean and robust accuracy (PGD with restarts, or AutoAttack) on source test images."""
    model = load_trained_model(cfg, checkpoint_dir, device)
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download)
    n = min(robustness.num_samples, len(splits.test))
    images = SubsetImageSet(splits.test, np.arange(n), splits.test.targets[:n])
    clean = compute_robust_accuracy(model, images, norm=cfg.norm, eps=0.0, attack=robustness.attack)
    if robustness.method == "autoattack":
        robust = compute_autoattack_accuracy(
            model,
            images,
            norm=cfg.norm,
            eps=robustness.eps,
            num_classes=splits.num_classes,
            seed=robustness.seed,
        )
    else:
        robust = compute_robust_accuracy(
            model,
            images,
            norm=cfg.norm,
            eps=robustness.eps,
            attack=robustness.attack,
            generator=torch.Generator(device=device).manual_seed(robustness.seed),
        )
    return {
        "eval_eps": robustness.eps,
        "eval_attack": robustness.id,
        "n_samples": n,
        "clean_acc": clean,
        "robust_acc": robust,
    }


def evaluate_inversion(
    cfg: TrainConfig,
    checkpoint_dir: Path | str,
    inversion: InversionConfig,
    num_images: int,
    artifact_path: str | None,
    load: LoadRequest = DEFAULT_LOAD,
    device: Device = "cpu",
) -> dict[str, Any]:
    """Reconstruct the first num_images source test images from their penultimate features."""
    model = load_trained_model(cfg, checkpoint_dir, device)
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download)
    n = min(num_images, len(splits.test))
    x0 = splits.test.get_batch(np.arange(n)).to(device)
    result = run_inversion(model.features, x0, inversion)
    if artifact_path is not None:
        scale = max(1, 64 // x0.shape[-1])
        save_inversion_grid(Path(artifact_path), x0, [result.reconstructions], scale=scale)
    return {
        "n_images": n,
        "steps": inversion.steps,
        "step_size": inversion.step_size,
        "tv_weight": inversion.tv_weight,
        "fisher_weight": inversion.fisher_weight,
        "psnr": result.psnr,
        "ssim": result.ssim,
        "relative_error": result.relative_error,
        "grid_path": artifact_path,
    }


def evaluate_finetune(
    cfg: TrainConfig,
    checkpoint_dir: Path | str,
    target: DatasetRef,
    data: DataConfig,
    finetune: FinetuneConfig,
    load: LoadRequest = DEFAULT_LOAD,
    device: Device = "cpu",
) -> dict[str, Any]:
    """Full fine-tuning of a trained network on one target (Salman et al. 2020)."""
    model = load_trained_model(cfg, checkpoint_dir, device)
    splits = build_dataset(target, data, load.root, load.download)
    return run_finetune(model, splits, finetune, source_format(cfg))


EVAL_KINDS = (
    "transfer",
    "random_init",
    "raw_pixels",
    "fisher",
    "robustness",
    "inversion",
    "finetune",
)


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
    robustness: RobustnessConfig | None = None
    inversion: InversionConfig | None = None
    num_images: int = 8
    finetune: FinetuneConfig | None = None
    artifact_path: str | None = None
    load: LoadRequest = field(default_factory=LoadRequest)


def run_evaluation(task: EvalTask, device: Device = "cpu") -> dict[str, Any]:
    """Run one EvalTask on a device and return its result row (with wall_time_s)."""
    t0 = time.perf_counter()
    cfg, ckpt = task.train, task.checkpoint
    if task.kind == "transfer":
        assert cfg and ckpt and task.target and task.probe
        result = evaluate_transfer(cfg, ckpt, task.target, task.data, task.probe, task.load, device)
    elif task.kind == "random_init":
        assert cfg and task.target and task.probe
        result = evaluate_random_init(cfg, task.target, task.probe, task.load, device)
    elif task.kind == "raw_pixels":
        assert task.target and task.probe
        result = evaluate_raw_pixels(task.target, task.data, task.probe, task.load)
    elif task.kind == "fisher":
        assert cfg and ckpt and task.fisher
        result = evaluate_fisher(cfg, ckpt, task.fisher, task.load, device)
    elif task.kind == "robustness":
        assert cfg and ckpt and task.robustness
        result = evaluate_robustness(cfg, ckpt, task.robustness, task.load, device)
    elif task.kind == "inversion":
        assert cfg and ckpt and task.inversion
        result = evaluate_inversion(
            cfg, ckpt, task.inversion, task.num_images, task.artifact_path, task.load, device
        )
    elif task.kind == "finetune":
        assert cfg and ckpt and task.target and task.finetune
        result = evaluate_finetune(
            cfg, ckpt, task.target, task.data, task.finetune, task.load, device
        )
    else:
        raise ValueError(f"unknown evaluation kind {task.kind!r}: choose one of {EVAL_KINDS}")
    result["wall_time_s"] = time.perf_counter() - t0
    return result
