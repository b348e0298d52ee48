"""Model registry: every architecture is a Classifier with normalisation inside.

Inputs are images in [0, 1]; the model normalises them itself so that an attack's eps is in
pixel units (PAPER.md section 2). `features(x)` gives the penultimate (pooled) representation
used by linear transfer, Fisher information and inversion; `head` maps it to logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainables.config import ArchRef


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, with mean and std as buffers so they move with the model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalise -> body (penultimate features, flat) -> linear head."""

    def __init__(self, normalize: Normalize, body: nn.Module, feature_dim: int, classes: int):
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ModelInput:
    """The shape and statistics of the images a model will see."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


BodyBuilder = Callable[[ModelInput, float], tuple[nn.Module, int]]
_REGISTRY: dict[str, BodyBuilder] = {}


def register_model(name: str) -> Callable[[BodyBuilder], BodyBuilder]:
    """Decorator: register a body builder (input spec, width) -> (module, feature_dim)."""

    def wrap(fn: BodyBuilder) -> BodyBuilder:
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_REGISTRY)


def build_model(arch: ArchRef, inputs: ModelInput, num_classes: int) -> Classifier:
    """Instantiate a registered architecture; an unknown name lists the choices."""
    if arch.name not in _REGISTRY:
        raise KeyError(f"unknown arch {arch.name!r}: choose one of {', '.join(list_models())}")
    if not arch.width > 0:
        raise ValueError(f"width must be positive, got {arch.width}")
    body, dim = _REGISTRY[arch.name](inputs, arch.width)
    return Classifier(Normalize(inputs.mean, inputs.std), body, dim, num_classes)


def _scaled(channels: int, width: float) -> int:
    return max(4, round(channels * width))


@register_model("small_cnn")
def _small_cnn(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """Two 3x3 conv blocks and a global average pool: seconds per epoch on digits on a CPU."""
    c1, c2 = _scaled(32, width), _scaled(64, width)
    body = nn.Sequential(
        nn.Conv2d(inputs.channels, c1, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 3, padding=1, stride=2 if inputs.size > 16 else 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c2, c2, 3, padding=1, stride=2),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return body, c2


class BasicBlock(nn.Module):
    """The ResNet basic block (two 3x3 convs, batch norm, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@register_model("resnet18")
def _resnet18(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), channels 64-512 times width."""
    widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
    layers: list[nn.Module] = [
        nn.Conv2d(inputs.channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    cin = widths[0]
    for i, cout in enumerate(widths):
        stride = 1 if i == 0 else 2
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin
