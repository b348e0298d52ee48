"""Adversarial training of one network (Madry et al.; PAPER.md section 2), one trial.

min over weights of E[max over ||delta|| <= eps of loss(f(x + delta), y)], the inner max by PGD.
The loop reports once per epoch through a Reporter: train loss and accuracy on the adversarial
batches, clean and PGD test accuracy, and a checkpoint. Every random stream (init, shuffling,
attack starts) is seeded from (seed, epoch), so a run resumed from a checkpoint continues as if
it had never stopped.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from trainables.attacks import pgd
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import AttackConfig, OptimConfig, TrainConfig, to_canonical
from trainables.data import Splits
from trainables.models import Classifier, ModelInput, build_model


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
    """PGD with the config's steps and step size (2.5 * eps / steps by default)."""
    return pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        steps=attack.steps,
        step_size=attack.alpha(eps),
        random_start=attack.random_start,
        generator=generator,
    )


def compute_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    attack: AttackConfig | None,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> float:
    """Top-1 accuracy in eval mode, on clean inputs (attack None) or under PGD."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        if attack is not None:
            xb = attack_batch(model, xb, yb, norm, eps, attack, generator)
        with torch.no_grad():
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct / max(len(x), 1)


def run_training(
    cfg: TrainConfig,
    splits: Splits,
    reporter: Reporter,
    *,
    device: torch.device | str = "cpu",
    resume_from: Path | None = None,
    workdir: Path | None = None,
) -> Classifier:
    """Adversarially train cfg's network on splits, reporting and checkpointing every epoch.

    resume_from is a checkpoint directory of this same trial; training continues after its epoch.
    """
    device = torch.device(device)
    model = build_model_for(cfg, splits).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    start_epoch = 0
    if resume_from is not None:
        manifest = load_checkpoint(Path(resume_from), model, optimizer)
        start_epoch = int(manifest["epoch"]) + 1
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    x_test, y_test = splits.x_test.to(device), splits.y_test.to(device)
    batch = cfg.optim.batch_size
    steps_per_epoch = max(1, math.ceil(len(x_train) / batch))
    config_json = to_canonical(asdict(cfg))

    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(
            len(x_train), generator=seeded_generator(cfg.seed, 0, epoch, torch.device("cpu"))
        )
        attack_gen = seeded_generator(cfg.seed, 1, epoch, device)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch].to(device)
            xb, yb = x_train[idx], y_train[idx]
            if cfg.eps > 0:
                xb = attack_batch(model, xb, yb, cfg.norm, cfg.eps, cfg.attack, attack_gen)
            for group in optimizer.param_groups:
                group["lr"] = compute_lr(cfg.optim, epoch, step, steps_per_epoch)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.detach().argmax(1) == yb).sum())
            seen += len(yb)
        train_time = time.perf_counter() - t0
        eval_gen = seeded_generator(cfg.seed, 2, epoch, device)
        metrics = {
            "epoch": float(epoch),
            "train/loss": loss_sum / max(seen, 1),
            "train/acc": correct / max(seen, 1),
            "test/acc_clean": compute_accuracy(
                model, x_test, y_test, norm=cfg.norm, eps=cfg.eps, attack=None, batch_size=512
            ),
            "test/acc_pgd": compute_accuracy(
                model,
                x_test,
                y_test,
                norm=cfg.norm,
                eps=cfg.eps,
                attack=cfg.eval_attack,
                batch_size=512,
                generator=eval_gen,
            ),
            "time/train_s": train_time,
            "time/epoch_s": time.perf_counter() - t0,
        }
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            ckpt = save_checkpoint(
                Path(tmp) / "checkpoint", model, optimizer, epoch=epoch, config=config_json
            )
            reporter.report(metrics, ckpt)
    return model
