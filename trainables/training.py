"""Adversarial training of one network (Madry et al.; PAPER.md section 2), one trial.

min over weights of E[max over ||delta|| <= eps of loss(f(x + delta), y)], the inner max by PGD,
FGSM with a random start, or "free" replays. The loop reports once per epoch through a
Reporter: train loss and accuracy on the adversarial batches, clean and robust test accuracy,
and a checkpoint. Every random stream (init, shuffling, augmentation, attack starts) is seeded
from (seed, epoch), so a run resumed from a checkpoint continues as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainables.attacks import clip_to_box, get_threat_model, pgd
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import AttackConfig, OptimConfig, RunOptions, TrainConfig, to_canonical
from trainables.data import (
    ImageSet,
    Splits,
    augment_batch,
    random_resized_crop_batch,
    to_unit_float,
)
from trainables.data.loader import Batches, cpu_share, plan_workers, requested_workers, view_seeds
from trainables.models import Classifier, ModelInput, build_model

AUGMENTATIONS = ("none", "flip", "crop_flip", "resized_crop_flip")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class Reporter(Protocol):
    """Where a trial's per-epoch metrics and checkpoints go (Tune in a study, a list in tests)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


def build_model_for(cfg: TrainConfig, splits: Splits) -> Classifier:
    """The trial's architecture for the source dataset, initialised from the trial's seed."""
    torch.manual_seed(cfg.seed)
    info = splits.info
    inputs = ModelInput(channels=info.channels, size=info.size, mean=info.mean, std=info.std)
    return build_model(cfg.arch, inputs, splits.num_classes)


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam; an unknown name lists the choices."""
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
        )
    if optim.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    raise ValueError(f"unknown optimizer {optim.optimizer!r}: choose one of sgd, adam")


def compute_lr(optim: OptimConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a given step: constant, step decay, or cosine annealed per step."""
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "step":
        return optim.lr * optim.step_gamma ** (epoch // optim.step_every)
    if optim.schedule == "cosine":
        progress = (epoch * steps_per_epoch + step) / max(optim.epochs * steps_per_epoch, 1)
        return 0.5 * optim.lr * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {optim.schedule!r}: choose one of constant, step, cosine")


def seeded_generator(seed: int, stream: int, epoch: int, device: torch.device) -> torch.Generator:
    """An independent, reproducible random stream per (seed, purpose, epoch)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + stream * 10_007 + epoch)
    return gen


def attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: float,
    attack: AttackConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Adversarial examples by PGD (with restarts) or FGSM-RS; free AT is a training loop."""
    if attack.method == "fgsm_rs":
        steps, random_start, restarts = 1, True, 1
    elif attack.method in ("pgd", "free"):
        # Evaluating a free-trained model still uses PGD with the configured steps.
        steps, random_start, restarts = attack.steps, attack.random_start, attack.restarts
    else:
        raise ValueError(f"unknown attack method {attack.method!r}: choose pgd, fgsm_rs, free")
    return pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        steps=steps,
        step_size=attack.alpha(eps),
        random_start=random_start,
        restarts=restarts,
        generator=generator,
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), as oneDNN reports it:
    there bf16 matmuls and convolutions run several times faster than fp32; elsewhere they are
    emulated and many times slower."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


class DeviceSetup:
    """Precision and memory format for the device.

    precision auto: bf16 autocast on CUDA and on a CPU with native bf16, fp32 elsewhere; bf16:
    bf16 wherever (on a CPU without native bf16 it is emulated: slow, with a warning); fp32.
    channels_last auto follows bf16; true and false force it.
    """

    def __init__(self, device: torch.device, options: RunOptions) -> None:
        if options.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"unknown precision {options.precision!r}: choose auto, fp32, bf16")
        if options.channels_last not in ("auto", "true", "false"):
            raise ValueError(
                f"unknown channels_last {options.channels_last!r}: choose auto, true, false"
            )
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        self.bf16 = options.precision == "bf16" or (options.precision == "auto" and native)
        if self.bf16 and not native:
            warnings.warn(
                f"precision bf16 on a {device.type} without native bf16: it is emulated, many "
                "times slower than fp32 (precision auto chooses fp32 here)",
                stacklevel=2,
            )
        cl = options.channels_last
        self.channels_last = cl == "true" or (cl == "auto" and self.bf16)
        self.device = device

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_model(self, model: ModuleT) -> ModuleT:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def iterate_minibatches(
    batches: Batches, order: np.ndarray, setup: DeviceSetup, seeds: np.ndarray | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x float in [0, 1], y) on the device, in the given order (uint8 batches of a file-backed
    set cross to the device as uint8 and become float there)."""
    targets = batches.images.targets
    for x, idx in batches(order, seeds):
        x = to_unit_float(setup.prepare_batch(x))
        yield x, torch.from_numpy(targets[idx]).to(setup.device)


def compute_accuracy(
    model: nn.Module,
    images: ImageSet | Batches,
    *,
    norm: str,
    eps: float,
    attack: AttackConfig | None,
    batch_size: int,
    setup: DeviceSetup,
    generator: torch.Generator | None = None,
) -> float:
    """Top-1 accuracy in eval mode, on clean inputs (attack None) or under the attack."""
    model.eval()
    correct = 0
    batches = images if isinstance(images, Batches) else Batches(images, batch_size)
    n = len(batches.images)
    for xb, yb in iterate_minibatches(batches, np.arange(n), setup):
        with setup.autocast():
            if attack is not None:
                xb = attack_batch(model, xb, yb, norm, eps, attack, generator)
            with torch.no_grad():
                correct += int((model(xb).argmax(1) == yb).sum())
    return correct / max(n, 1)


def augment(
    x: torch.Tensor, cfg: OptimConfig, generator: torch.Generator, decoded: bool = False
) -> torch.Tensor:
    """The configured tensor augmentation (none, flip, crop_flip, resized_crop_flip); decoded:
    the batch is a file-backed set's train view, already cropped and flipped by the loader."""
    if cfg.augment == "none" or (decoded and cfg.augment == "resized_crop_flip"):
        return x
    if cfg.augment == "flip":
        return augment_batch(x, generator, crop_padding=0, flip=True)
    if cfg.augment == "crop_flip":
        return augment_batch(x, generator, crop_padding=cfg.crop_padding, flip=True)
    if cfg.augment == "resized_crop_flip":
        return augment_batch(
            random_resized_crop_batch(x, generator), generator, crop_padding=0, flip=True
        )
    raise ValueError(f"unknown augment {cfg.augment!r}: choose one of {', '.join(AUGMENTATIONS)}")


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels on request; cuDNN autotuning otherwise (CUDA only)."""
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    setup: DeviceSetup,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PGD (or FGSM-RS) adversarial training step, a clean one at eps 0: (loss, logits)."""
    with setup.autocast():
        if cfg.eps > 0:
            xb = attack_batch(model, xb, yb, cfg.norm, cfg.eps, cfg.attack, generator)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


class FreeState:
    """The perturbation that free adversarial training carries across replays and minibatches."""

    def __init__(self) -> None:
        self.delta: torch.Tensor | None = None

    def for_batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta is None or self.delta.shape[1:] != x.shape[1:] or len(self.delta) < len(x):
            self.delta = torch.zeros_like(x)
        return self.delta[: len(x)]


def free_training_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    setup: DeviceSetup,
    free: FreeState,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Free AT (Shafahi et al. 2019) on one minibatch: one backward pass gives both the weight
    update and the perturbation's ascent step, replayed cfg.attack.replays times; the
    perturbation carries over to the next minibatch. (loss, logits) of the last replay."""
    threat = get_threat_model(cfg.norm)
    delta = free.for_batch(xb)
    for _ in range(cfg.attack.replays):
        delta = delta.detach().requires_grad_(True)
        with setup.autocast():
            logits = net(xb + delta)
            loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            # loss.backward() through net(xb + delta) has just set delta.grad.
            assert delta.grad is not None
            delta = threat.project(
                threat.step(delta, delta.grad, cfg.attack.alpha(cfg.eps)), cfg.eps
            )
            delta = clip_to_box(xb, delta)
    free.delta[: len(xb)] = delta.detach()  # type: ignore[index]
    return loss, logits


def run_training(
    cfg: TrainConfig,
    splits: Splits,
    reporter: Reporter,
    *,
    device: torch.device | str = "cpu",
    resume_from: Path | None = None,
    workdir: Path | None = None,
    options: RunOptions | None = None,
) -> Classifier:
    """Adversarially train cfg's network on splits, reporting and checkpointing every epoch.

    resume_from is a checkpoint directory of this same trial; training continues after its epoch.
    """
    device = torch.device(device)
    options = options or RunOptions()
    setup = DeviceSetup(device, options)
    set_determinism(cfg.deterministic, device)
    model = build_model_for(cfg, splits)
    model = setup.prepare_model(model)
    net = compiled(model, options, device)
    optimizer = build_optimizer(model, cfg.optim)
    start_epoch = 0
    history: list[dict[str, float]] = []
    if resume_from is not None:
        manifest = load_checkpoint(Path(resume_from), model, optimizer)
        start_epoch = int(manifest["epoch"]) + 1
        history = list(manifest.get("history", []))
    batch = cfg.optim.batch_size
    # File-backed sets are decoded by worker processes, which take CPUs from this process's
    # torch threads; the test pass's workers run only while it does.
    workers = plan_workers(requested_workers(splits.train), torch.get_num_threads(), device.type)
    cuda = device.type == "cuda"
    train_data = Batches(
        splits.train,
        batch,
        workers=workers,
        pin_memory=cuda,
        train_view=cfg.optim.augment == "resized_crop_flip",
    )
    test_data = Batches(splits.test, 512, workers=workers, pin_memory=cuda, persistent=False)
    try:
        with cpu_share(train_data.workers):
            _train_epochs(
                cfg,
                net,
                model,
                optimizer,
                train_data,
                test_data,
                reporter,
                setup,
                options,
                start_epoch=start_epoch,
                history=history,
                workdir=workdir,
            )
    finally:
        train_data.close()
    return model


def compiled(model: nn.Module, options: RunOptions, device: torch.device) -> nn.Module:
    """The network as the training step and the attack call it: torch.compile'd when
    options.compile is on (the parameters are the model's own: its checkpoint is unchanged)."""
    if not options.compile:
        return model
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise RuntimeError(
            "training.compile: true on the CPU needs a C++ compiler for torch.compile's code "
            "(none on PATH): install g++, or set training.compile: false"
        )
    return torch.compile(model)  # type: ignore[return-value]


def measure_test_accuracy(
    net: nn.Module,
    test_data: Batches,
    cfg: TrainConfig,
    setup: DeviceSetup,
    robust: torch.Generator | None,
) -> dict[str, float]:
    """An epoch's test accuracy, clean and under the trial's eval attack at its own eps (the
    attack seeded by `robust`; NaN when None: an epoch between training.robust_eval_every)."""

    def accuracy(attack: AttackConfig | None, generator: torch.Generator | None) -> float:
        return compute_accuracy(
            net, test_data, norm=cfg.norm, eps=cfg.eps, attack=attack, batch_size=512,
            setup=setup, generator=generator,
        )  # fmt: skip

    clean = accuracy(None, None)
    pgd = accuracy(cfg.eval_attack, robust) if robust is not None else math.nan
    return {"test/acc_clean": clean, "test/acc_pgd": pgd}


def _train_epochs(
    cfg: TrainConfig,
    net: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_data: Batches,
    test_data: Batches,
    reporter: Reporter,
    setup: DeviceSetup,
    options: RunOptions,
    *,
    start_epoch: int,
    history: list[dict[str, float]],
    workdir: Path | None,
) -> None:
    """The epochs from start_epoch on: train, measure, checkpoint and report each."""
    device = setup.device
    n_train = len(train_data.images)
    steps_per_epoch = max(1, math.ceil(n_train / cfg.optim.batch_size))
    config_json = to_canonical(asdict(cfg))
    free = FreeState()
    decoded = train_data.file_backed and train_data.train_view

    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.perf_counter()
        cpu_gen = seeded_generator(cfg.seed, 0, epoch, torch.device("cpu"))
        order = torch.randperm(n_train, generator=cpu_gen).numpy()
        aug_gen = seeded_generator(cfg.seed, 3, epoch, torch.device("cpu"))
        seeds = view_seeds(n_train, aug_gen) if decoded else None
        attack_gen = seeded_generator(cfg.seed, 1, epoch, device)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (xb, yb) in enumerate(iterate_minibatches(train_data, order, setup, seeds)):
            xb = augment(xb, cfg.optim, aug_gen, decoded)
            for group in optimizer.param_groups:
                group["lr"] = compute_lr(cfg.optim, epoch, step, steps_per_epoch)
            if cfg.attack.method == "free" and cfg.eps > 0:
                loss, logits = free_training_step(net, optimizer, xb, yb, cfg, setup, free)
            else:
                loss, logits = training_step(net, optimizer, xb, yb, cfg, setup, attack_gen)
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.detach().argmax(1) == yb).sum())
            seen += len(yb)
        train_time = time.perf_counter() - t0
        eval_gen = seeded_generator(cfg.seed, 2, epoch, device)
        last = epoch == cfg.optim.epochs - 1
        robust_now = last or (epoch + 1) % max(options.robust_eval_every, 1) == 0
        metrics = {
            "epoch": float(epoch),
            "train/loss": loss_sum / max(seen, 1),
            "train/acc": correct / max(seen, 1),
            **measure_test_accuracy(net, test_data, cfg, setup, eval_gen if robust_now else None),
            "time/train_s": train_time,
            "time/epoch_s": time.perf_counter() - t0,
            "throughput/train_img_s": seen / max(train_time, 1e-9),
            # The epoch this process started from: > 0 when it resumed from a checkpoint.
            "trial/start_epoch": float(start_epoch),
            # What precision auto chose on this machine (1 = on): results agree up to rounding.
            "trial/bf16": float(setup.bf16),
            "trial/channels_last": float(setup.channels_last),
        }
        history.append(metrics)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            ckpt = save_checkpoint(
                Path(tmp) / "checkpoint",
                model,
                optimizer,
                epoch=epoch,
                config=config_json,
                history=history,
            )
            reporter.report(metrics, ckpt)
