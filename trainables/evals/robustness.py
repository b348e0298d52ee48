"""Robust accuracy: PGD-k with restarts, and AutoAttack through torchattacks (optional extra).

AutoAttack (Croce & Hein 2020) is the standard for reporting robustness; it comes from the
maintained `torchattacks` package (`pip install atsweep[autoattack]`), imported only when used.
The radii that RobustBench and the literature report per dataset and norm (STANDARD_EPS,
standard_eps) are in trainables.config, where spec validation reads them without torch.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import AttackConfig
from trainables.data import ImageSet, adapt_images, iterate_batches


def compute_robust_accuracy(
    model: nn.Module,
    images: ImageSet,
    *,
    norm: str,
    eps: float,
    attack: AttackConfig,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    input_format: tuple[int, int] | None = None,
) -> float:
    """Accuracy under PGD (steps, restarts) or FGSM-RS, in eval mode."""
    from trainables.training import attack_batch

    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for x, y in iterate_batches(images, batch_size):
        x = adapt_images(x, *input_format) if input_format else x
        x, y = x.to(device), y.to(device)
        x_adv = attack_batch(model, x, y, norm, eps, attack, generator)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
    return correct / max(len(images), 1)


def compute_autoattack_accuracy(
    model: nn.Module,
    images: ImageSet,
    *,
    norm: str,
    eps: float,
    num_classes: int,
    version: str = "standard",
    batch_size: int = 256,
    seed: int = 0,
    input_format: tuple[int, int] | None = None,
) -> float:
    """Accuracy under AutoAttack (APGD-CE, APGD-T, FAB-T, Square) from torchattacks."""
    try:
        import torchattacks
    except ImportError as exc:
        raise ImportError(
            "AutoAttack needs the optional torchattacks package: pip install 'atsweep[autoattack]'"
        ) from exc
    if version == "standard" and num_classes < 4:
        # The targeted DLR loss of APGD-T and FAB-T compares the top four logits.
        raise ValueError(
            f"AutoAttack 'standard' needs at least 4 classes, got num_classes={num_classes}: "
            "use a source with 4 or more classes, or PGD with restarts"
        )
    model.eval()
    version_norm = None if eps == 0 else {"linf": "Linf", "l2": "L2"}[norm]
    device = next(model.parameters()).device
    correct = 0
    for x, y in iterate_batches(images, batch_size):
        x = adapt_images(x, *input_format) if input_format else x
        x, y = x.to(device), y.to(device)
        if version_norm is not None:
            attack = torchattacks.AutoAttack(
                model, norm=version_norm, eps=eps, version=version, n_classes=num_classes, seed=seed
            )
            x = attack(x, y)
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(images), 1)
