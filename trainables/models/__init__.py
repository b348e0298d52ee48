"""Model registry: every architecture is a Classifier with normalisation inside.

Inputs are images in [0, 1]; the model normalises them itself so that an attack's eps is in
pixel units (PAPER.md section 2). `features(x)` gives the penultimate (pooled) representation
used by linear transfer, Fisher information and inversion; `head` maps it to logits.

The registry lives in `registry`; importing this package registers the CIFAR-style bodies
(`cifar`: small_cnn, resnet18, resnet50, preact_resnet18, wrn28_10) and the torchvision
ImageNet ones (`imagenet`: tv_resnet18, tv_resnet50, tv_wide_resnet50_2). Their names are in
the torch-free trainables.catalog (list_models), which a spec is validated against.
"""

from __future__ import annotations

from trainables.models import cifar, imagenet
from trainables.models.cifar import BasicBlock, Bottleneck, PreActBlock, WideBasicBlock
from trainables.models.registry import (
    BodyBuilder,
    Classifier,
    ModelInput,
    ModelSpec,
    Normalize,
    build_model,
    model_family,
    model_specs,
    model_stages,
    register_model,
    scaled,
)

__all__ = [
    "BasicBlock",
    "BodyBuilder",
    "Bottleneck",
    "Classifier",
    "ModelInput",
    "ModelSpec",
    "Normalize",
    "PreActBlock",
    "WideBasicBlock",
    "build_model",
    "cifar",
    "imagenet",
    "model_family",
    "model_specs",
    "model_stages",
    "register_model",
    "scaled",
]
