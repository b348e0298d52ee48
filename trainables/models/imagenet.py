"""Torchvision ImageNet ResNets as bodies: randomly initialised, fc removed, torchvision's names.

Built with `torchvision.models.<name>(weights=None)` so nothing is ever downloaded; pretrained
(robust) weights come from local files through trainables/checkpoint_import.py. The body keeps
torchvision's module names (conv1, bn1, layer1..layer4, downsample), with `fc` replaced by an
identity so the body returns the flattened average-pool output and our head plays the role of
`fc`. Widths are fixed (ArchRef.width must be 1.0); other input channel counts replace conv1.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from trainables.models.registry import ModelInput, register_model

TV_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


def torchvision_body(name: str, inputs: ModelInput) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier: (module returning flat features, dim)."""
    import torchvision.models  # here, not at import: torchvision takes seconds to import

    factory: Callable[..., torchvision.models.ResNet] = getattr(torchvision.models, name)
    net = factory(weights=None)
    if inputs.channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(
            inputs.channels,
            old.out_channels,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=False,
        )
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


@register_model("tv_resnet18", family="imagenet", stages=TV_STAGES)
def _tv_resnet18(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """torchvision resnet18 (7x7 stem, max-pool), 512 features."""
    return torchvision_body("resnet18", inputs)


@register_model("tv_resnet50", family="imagenet", stages=TV_STAGES)
def _tv_resnet50(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """torchvision resnet50, 2048 features."""
    return torchvision_body("resnet50", inputs)


@register_model("tv_wide_resnet50_2", family="imagenet", stages=TV_STAGES)
def _tv_wide_resnet50_2(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """torchvision wide_resnet50_2 (bottlenecks twice as wide), 2048 features."""
    return torchvision_body("wide_resnet50_2", inputs)
