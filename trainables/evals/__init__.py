"""Evaluations of a trained network, each a pure function of configs and a checkpoint path.

These are what a study fans out as each training trial finishes (PAPER.md sections 3-5):
linear transfer to a target (and full fine-tuning), the raw-pixel and random-init baselines,
the Fisher information of the input and of the weights, robust accuracy, and inversion.
Each returns a flat dict of results; the study layer adds keys and writes them.

An EvalTask names its kind and carries that kind's frozen settings; run_evaluation looks the
kind up in a registry of evaluators, so a new kind is one register_evaluator call, with no
change to EvalTask or run_evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, KeysView
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from trainables.catalog import get_dataset_info
from trainables.checkpoint import load_checkpoint
from trainables.config import (
    DataConfig,
    DatasetRef,
    EvalTask,
    FinetuneConfig,
    FisherConfig,
    InversionConfig,
    InversionRequest,
    LoadRequest,
    ProbeConfig,
    RobustnessConfig,
    TrainConfig,
)
from trainables.data import DEFAULT_LOAD, ImageSet, SubsetImageSet, build_dataset, iterate_batches
from trainables.evals.finetune import run_finetune
from trainables.evals.fisher import (
    compute_input_fisher,
    compute_input_fisher_eigenvalue,
    compute_weight_fisher,
)
from trainables.evals.inversion import run_inversion, save_inversion_grid
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
    splits = build_dataset(target, data, load.root, load.download, load.workers)
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
    splits = build_dataset(target, cfg.data, load.root, load.download, load.workers)
    return _probe_row(run_transfer(model, splits, probe, cfg.seed, source_format(cfg)))


def evaluate_raw_pixels(
    target: DatasetRef, data: DataConfig, probe: ProbeConfig, load: LoadRequest = DEFAULT_LOAD
) -> dict[str, Any]:
    """The raw-pixel baseline of one target."""
    splits = build_dataset(target, data, load.root, load.download, load.workers)
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
    return fisher_of(model, cfg, fisher, load, device)


def evaluate_random_init_fisher(
    cfg: TrainConfig, fisher: FisherConfig, load: LoadRequest = DEFAULT_LOAD, device: Device = "cpu"
) -> dict[str, Any]:
    """The Fisher reference: the same measurement on the untrained network of cfg's arch and
    seed, where the scale starts before any training."""
    return fisher_of(build_untrained_model(cfg).to(device).eval(), cfg, fisher, load, device)


def fisher_of(
    model: Classifier, cfg: TrainConfig, fisher: FisherConfig, load: LoadRequest, device: Device
) -> dict[str, Any]:
    """evaluate_fisher's measurement on a given network of cfg's source."""
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download, load.workers)
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
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download, load.workers)
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
    """Reconstruct the first num_images source test images from their penultimate features,
    beside the no-information references (the starting image, the training split's mean image)."""
    model = load_trained_model(cfg, checkpoint_dir, device)
    splits = build_dataset(cfg.source, cfg.data, load.root, load.download, load.workers)
    n = min(num_images, len(splits.test))
    x0 = splits.test.get_batch(np.arange(n)).to(device)
    reference = _MEAN_IMAGES.get((cfg.source, cfg.data, load.root))
    if reference is None:
        reference = _MEAN_IMAGES[(cfg.source, cfg.data, load.root)] = mean_image(splits.train)
    result = run_inversion(model.features, x0, inversion, reference)
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
        "optimizer": inversion.optimizer,
        "schedule": inversion.schedule,
        "start_psnr": result.start_psnr,
        "start_ssim": result.start_ssim,
        "mean_image_psnr": result.mean_image_psnr,
        "mean_image_ssim": result.mean_image_ssim,
        "start_relative_error": result.start_relative_error,
        "final_improvement": result.final_improvement,
        "converged": result.converged,
        "start": inversion.start,
        "restarts": inversion.restarts,
    }


# Images averaged for an inversion's mean-image reference (the whole split when smaller).
MEAN_IMAGE_SAMPLES = 1024
# Each (source, data split, root)'s mean image, computed once per worker process: every network
# and variant of a source shares it (1024 decodes of a file-backed source otherwise, each time).
_MEAN_IMAGES: dict[tuple[object, ...], torch.Tensor] = {}


def mean_image(images: ImageSet) -> torch.Tensor:
    """The mean of the first MEAN_IMAGE_SAMPLES images of a split: the best constant guess of an
    image, in squared error, for someone who knows the dataset but nothing of the image."""
    n = min(MEAN_IMAGE_SAMPLES, len(images))
    total: torch.Tensor | None = None
    for x, _ in iterate_batches(images, 256, np.arange(n)):
        batch = x.double().sum(0)
        total = batch if total is None else total + batch
    assert total is not None, "a split has at least one image"
    return (total / n).float()


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
    splits = build_dataset(target, data, load.root, load.download, load.workers)
    return run_finetune(model, splits, finetune, source_format(cfg))


Evaluator = Callable[[EvalTask, Device], dict[str, Any]]

_EVALUATORS: dict[str, Evaluator] = {}

# The registered kinds, a live view of the registry (a kind registered later is in it too).
EVAL_KINDS: KeysView[str] = _EVALUATORS.keys()


def register_evaluator(kind: str, fn: Evaluator) -> None:
    """Make run_evaluation run fn(task, device) for tasks of this kind; fn returns the flat
    result row (run_evaluation adds wall_time_s). A kind registered again is replaced.

    Evaluations run in Ray worker processes: register in a module that the workers import too
    (as the built-in kinds below are, with this package).
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"an evaluation kind must be a non-empty string, got {kind!r}: name it")
    if not callable(fn):
        raise TypeError(
            f"the evaluator of kind {kind!r} must be a function (task, device) -> dict, got a "
            f"{type(fn).__name__}: pass the function itself"
        )
    _EVALUATORS[kind] = fn


def run_evaluation(task: EvalTask, device: Device = "cpu") -> dict[str, Any]:
    """Run one EvalTask on a device and return its result row (with wall_time_s)."""
    evaluator = _EVALUATORS.get(task.kind)
    if evaluator is None:
        raise ValueError(
            f"unknown evaluation kind {task.kind!r}: choose one of {', '.join(EVAL_KINDS)}, or "
            "register it with trainables.evals.register_evaluator"
        )
    t0 = time.perf_counter()
    result = evaluator(task, device)
    result["wall_time_s"] = time.perf_counter() - t0
    return result


# --- the built-in kinds ---------------------------------------------------------------------

S = TypeVar("S")


def task_settings(task: EvalTask, kind_type: type[S]) -> S:
    """task.settings, checked to be the type its kind needs."""
    if not isinstance(task.settings, kind_type):
        raise TypeError(
            f"evaluation kind {task.kind!r} needs settings of type {kind_type.__name__}, got "
            f"{type(task.settings).__name__}: build the EvalTask with a {kind_type.__name__}"
        )
    return task.settings


def _required(task: EvalTask, name: str) -> Any:
    """A field of the task that its kind needs (train, checkpoint, target)."""
    value = getattr(task, name)
    if value is None:
        raise ValueError(f"evaluation kind {task.kind!r} needs task.{name}, got None: set it")
    return value


def _run_transfer(task: EvalTask, device: Device) -> dict[str, Any]:
    return evaluate_transfer(
        _required(task, "train"),
        _required(task, "checkpoint"),
        _required(task, "target"),
        task.data,
        task_settings(task, ProbeConfig),
        task.load,
        device,
    )


def _run_random_init(task: EvalTask, device: Device) -> dict[str, Any]:
    return evaluate_random_init(
        _required(task, "train"),
        _required(task, "target"),
        task_settings(task, ProbeConfig),
        task.load,
        device,
    )


def _run_raw_pixels(task: EvalTask, device: Device) -> dict[str, Any]:
    # No network: the probe fits on pixels on the CPU, whatever the device.
    return evaluate_raw_pixels(
        _required(task, "target"), task.data, task_settings(task, ProbeConfig), task.load
    )


def _run_fisher(task: EvalTask, device: Device) -> dict[str, Any]:
    return evaluate_fisher(
        _required(task, "train"),
        _required(task, "checkpoint"),
        task_settings(task, FisherConfig),
        task.load,
        device,
    )


def _run_random_init_fisher(task: EvalTask, device: Device) -> dict[str, Any]:
    return evaluate_random_init_fisher(
        _required(task, "train"), task_settings(task, FisherConfig), task.load, device
    )


def _run_robustness(task: EvalTask, device: Device) -> dict[str, Any]:
    return evaluate_robustness(
        _required(task, "train"),
        _required(task, "checkpoint"),
        task_settings(task, RobustnessConfig),
        task.load,
        device,
    )


def _run_inversion(task: EvalTask, device: Device) -> dict[str, Any]:
    request = task_settings(task, InversionRequest)
    return evaluate_inversion(
        _required(task, "train"),
        _required(task, "checkpoint"),
        request.config,
        request.num_images,
        task.artifact_path,
        task.load,
        device,
    )


def _run_finetune(task: EvalTask, device: Device) -> dict[str, Any]:
    return evaluate_finetune(
        _required(task, "train"),
        _required(task, "checkpoint"),
        _required(task, "target"),
        task.data,
        task_settings(task, FinetuneConfig),
        task.load,
        device,
    )


def _run_source_accuracy(task: EvalTask, device: Device) -> dict[str, Any]:
    """An imported network's clean and robust accuracy on its source test set, under the names
    training reports them by (test/acc_clean, test/acc_pgd)."""
    result = _run_robustness(task, device)
    return {
        "eval_eps": result["eval_eps"],
        "eval_attack": result["eval_attack"],
        "n_samples": result["n_samples"],
        "test_acc_clean": result["clean_acc"],
        "test_acc_pgd": result["robust_acc"],
    }


register_evaluator("transfer", _run_transfer)
register_evaluator("source_accuracy", _run_source_accuracy)
register_evaluator("random_init", _run_random_init)
register_evaluator("raw_pixels", _run_raw_pixels)
register_evaluator("fisher", _run_fisher)
register_evaluator("fisher_random_init", _run_random_init_fisher)
register_evaluator("robustness", _run_robustness)
register_evaluator("inversion", _run_inversion)
register_evaluator("finetune", _run_finetune)
