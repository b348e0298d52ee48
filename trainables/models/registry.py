"""The model registry: a Classifier wraps normalisation, a registered body and a linear head.

Inputs are images in [0, 1]; the model normalises them itself so that an attack's eps is in
pixel units (PAPER.md section 2). `features(x)` gives the penultimate (pooled, flat)
representation used by linear transfer, Fisher information and inversion; `head` maps it to
logits. Every body returns those flat features, so the head is the same for every architecture.
The names live in the torch-free trainables.catalog (what a spec is validated against);
register_model adds its name there and keeps the builder here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainables.catalog import list_models, register_model_name
from trainables.config import ArchRef

# A "cifar" family body scales its channels with ArchRef.width; an "imagenet" (torchvision)
# body has fixed widths and only accepts width 1.0.
FAMILIES = ("cifar", "imagenet")


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, with mean and std as buffers so they move with the model."""

    # register_buffer sets them; declared so that mypy reads them as tensors, not Tensor | Module.
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalise -> body (penultimate features, flat) -> linear head."""

    def __init__(
        self,
        normalize: Normalize,
        body: nn.Module,
        feature_dim: int,
        classes: int,
        *,
        arch: str | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, classes)
        # The registered architecture name (None for a hand-built Classifier); checkpoint
        # import uses it to pick the key mapping of an external checkpoint.
        self.arch = arch

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


@dataclass(frozen=True)
class ModelSpec:
    """A registered body builder, its family and the names of its stages in forward order."""

    builder: BodyBuilder
    family: str
    stages: tuple[str, ...]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, family: str = "cifar", stages: tuple[str, ...] = ()
) -> Callable[[BodyBuilder], BodyBuilder]:
    """Decorator: register a body builder (input spec, width) -> (module, feature_dim).

    `family` is "cifar" (width scales channels) or "imagenet" (fixed widths, width must be
    1.0); `stages` names the body's submodules in forward order (stem and residual stages).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def wrap(fn: BodyBuilder) -> BodyBuilder:
        _REGISTRY[name] = ModelSpec(fn, family, stages)
        register_model_name(name)
        return fn

    return wrap


def model_specs() -> dict[str, ModelSpec]:
    """Every architecture that has a builder, by name (built-ins and later registrations)."""
    return dict(_REGISTRY)


def _spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        if name in list_models():
            raise KeyError(
                f"arch {name!r} is in trainables.catalog but has no builder: register it with "
                "@trainables.models.register_model in the process that builds it"
            )
        raise KeyError(f"unknown arch {name!r}: choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def model_family(name: str) -> str:
    """'cifar' (32x32-style body, width scales channels) or 'imagenet' (torchvision, width 1)."""
    return _spec(name).family


def model_stages(name: str) -> tuple[str, ...]:
    """The body's submodule names in forward order (e.g. conv1, layer1..layer4) for a model."""
    return _spec(name).stages


def build_model(arch: ArchRef, inputs: ModelInput, num_classes: int) -> Classifier:
    """Instantiate a registered architecture; an unknown name lists the choices."""
    spec = _spec(arch.name)
    if not arch.width > 0:
        raise ValueError(f"width must be positive, got {arch.width}")
    if spec.family == "imagenet" and arch.width != 1.0:
        raise ValueError(
            f"arch {arch.name!r} is a torchvision ImageNet model with fixed channel widths, so "
            f"width must be 1.0, got {arch.width}: set width 1.0, or use a CIFAR-style arch "
            "(resnet18, resnet50, preact_resnet18, wrn28_10) to scale channels"
        )
    body, dim = spec.builder(inputs, arch.width)
    return Classifier(Normalize(inputs.mean, inputs.std), body, dim, num_classes, arch=arch.name)


def scaled(channels: int, width: float) -> int:
    """A channel count times the width multiplier, rounded, and at least 4."""
    return max(4, round(channels * width))
