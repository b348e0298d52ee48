"""Full fine-tuning transfer (Salman et al. 2020): every weight trained on the target.

The source network's head is replaced by a fresh linear layer for the target's classes and the
whole network is trained with clean inputs (SGD, cosine schedule), then scored on the target
test split. It sits beside the linear probe, which freezes the representation.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainables.config import FinetuneConfig
from trainables.data import Splits, adapt_images

if TYPE_CHECKING:  # annotations only: importing this module loads no model code
    from trainables.models import Classifier


def run_finetune(
    model: Classifier,
    target: Splits,
    cfg: FinetuneConfig,
    input_format: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Fine-tune a copy of model on the target; returns train and test accuracy."""
    torch.manual_seed(cfg.seed)
    net = copy.deepcopy(model)
    device = next(net.parameters()).device
    net.head = nn.Linear(net.head.in_features, target.num_classes).to(device)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    n = len(target.train)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch(images: object, idx: np.ndarray) -> torch.Tensor:
        x = target.train.get_batch(idx) if images is None else images.get_batch(idx)  # type: ignore[attr-defined]
        x = adapt_images(x, *input_format) if input_format else x
        return x.to(device)

    step = 0
    correct = seen = 0
    for _ in range(cfg.epochs):
        net.train()
        order = torch.randperm(n, generator=gen).numpy()
        correct = seen = 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x, y = batch(None, idx), torch.from_numpy(target.train.targets[idx]).to(device)
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            step += 1
    net.eval()
    test_correct = 0
    with torch.no_grad():
        for start in range(0, len(target.test), 256):
            idx = np.arange(start, min(start + 256, len(target.test)))
            x = batch(target.test, idx)
            y = torch.from_numpy(target.test.targets[idx]).to(device)
            test_correct += int((net(x).argmax(1) == y).sum())
    return {
        "test_acc": test_correct / max(len(target.test), 1),
        "train_acc": correct / max(seen, 1),
        "n_train": n,
        "n_test": len(target.test),
    }
