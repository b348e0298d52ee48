"""Checkpoints written in the published formats, byte for byte as their libraries save them:
the MadryLab robustness library's AttackerModel dict, RobustBench's state dict, torchvision's
state dict and our own safetensors (tests/unit/trainables/test_checkpoint_import.py and
tests/e2e/test_imported.py); not a test module itself."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from trainables.models import Classifier


def network(model: Classifier, head: str) -> dict[str, torch.Tensor]:
    """Our network's weights under the external library's names: body.X -> X, head -> `head`."""
    out = {k.removeprefix("body."): v.clone() for k, v in model.state_dict().items()}
    out = {k: v for k, v in out.items() if not k.startswith(("normalize.", "head."))}
    out[f"{head}.weight"] = model.head.weight.detach().clone()
    out[f"{head}.bias"] = model.head.bias.detach().clone()
    return out


def robustness_file(path: Path, source: Classifier, head: str) -> Path:
    """As MadryLab robustness saves an AttackerModel in DataParallel (train.py save_checkpoint)."""
    net = network(source, head)
    channels = source.normalize.mean.numel()
    mean = source.normalize.mean.view(channels, 1, 1).clone()
    std = source.normalize.std.view(channels, 1, 1).clone()
    sd: dict[str, torch.Tensor] = {
        "module.normalizer.new_mean": mean,
        "module.normalizer.new_std": std,
    }
    sd |= {f"module.model.{k}": v for k, v in net.items()}
    sd |= {"module.attacker.normalize.new_mean": mean, "module.attacker.normalize.new_std": std}
    sd |= {f"module.attacker.model.{k}": v.clone() for k, v in net.items()}
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "optimizer": optimizer.state_dict(), "epoch": 10}, path)
    return path


def robustbench_file(path: Path, source: Classifier, head: str) -> Path:
    """As RobustBench's model zoo stores a network: a 'module.'-prefixed state dict under
    'state_dict', its normaliser as mu / sigma buffers (at models/DATASET/THREAT/NAME.pt)."""
    sd = {f"module.{k}": v for k, v in network(source, head).items()}
    sd["module.mu"] = source.normalize.mean.clone()
    sd["module.sigma"] = source.normalize.std.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, path)
    return path


def torchvision_file(path: Path, source: Classifier) -> Path:
    """As torchvision.models saves its weights: the network's own names, no normaliser."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network(source, "fc"), path)
    return path


def safetensors_file(path: Path, source: Classifier) -> Path:
    """Our own key names in a .safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path
