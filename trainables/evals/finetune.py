"""Full fine-tuning transfer (Salman et al. 2020): every weight trained on the target.

The source network's head is replaced by a fresh linear layer for the target's classes and the
whole network is trained with clean inputs (SGD, cosine schedule), then scored on the target
test split. It sits beside the linear probe, which freezes the representation.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from trainables.config import FinetuneConfig
from trainables.data import Splits, adapt_images, to_unit_float
from trainables.data.loader import Batches, cpu_share, plan_workers, requested_workers

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
    # File-backed targets are decoded by worker processes (their test view; see
    # trainables.data.loader), which take CPUs from this process's torch threads meanwhile.
    workers = plan_workers(requested_workers(target.train), torch.get_num_threads(), device.type)
    cuda = device.type == "cuda"
    train_data = Batches(target.train, cfg.batch_size, workers=workers, pin_memory=cuda)
    test_data = Batches(target.test, 256, workers=workers, pin_memory=cuda, persistent=False)

    def on_device(x: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(x.to(device, non_blocking=True))
        return adapt_images(x, *input_format) if input_format else x

    step = 0
    correct = seen = 0
    try:
        with cpu_share(train_data.workers):
            for _ in range(cfg.epochs):
                net.train()
                order = torch.randperm(n, generator=gen).numpy()
                correct = seen = 0
                for xb, idx in train_data(order):
                    x, y = on_device(xb), torch.from_numpy(target.train.targets[idx]).to(device)
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
                for xb, idx in test_data():
                    y = torch.from_numpy(target.test.targets[idx]).to(device)
                    test_correct += int((net(on_device(xb)).argmax(1) == y).sum())
    finally:
        train_data.close()
    return {
        "test_acc": test_correct / max(len(target.test), 1),
        "train_acc": correct / max(seen, 1),
        "n_train": n,
        "n_test": len(target.test),
    }
