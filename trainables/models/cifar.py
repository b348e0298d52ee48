"""CIFAR-style bodies (3x3 stem, no max-pool) named like the libraries that publish robust weights.

Module names follow the reference implementations so that an external checkpoint maps onto a
body by a prefix rename (trainables/checkpoint_import.py):

* resnet18, resnet50: MadryLab `robustness` cifar_models/resnet.py (conv1, bn1, layer1..layer4;
  blocks conv1/bn1/conv2/bn2[/conv3/bn3]/shortcut; its final layer `linear` is our head).
* preact_resnet18: Rice et al. 2020 / RobustBench PreActResNet (conv1, layer1..layer4, bn;
  blocks bn1/conv1/bn2/conv2[/shortcut]; final layer `linear`).
* wrn28_10, wrn34_10: RobustBench / TRADES WideResNet (conv1, block1..block3 each
  `.layer.<i>`, bn1; blocks bn1/conv1/bn2/conv2[/convShortcut]; final layer `fc`).
* wrn70_16: RobustBench's DMWideResNet, DeepMind's WideResNet with Swish activations (Gowal et
  al. 2020, Rebuffi et al. 2021): init_conv, layer.<group>.block.<i>, batchnorm; blocks
  batchnorm_0/conv_0/batchnorm_1/conv_1[/shortcut]; final layer `logits`. Its normalisation is
  not in its checkpoints (RobustBench keeps the dataset's mean and std in code).

Every body ends in a global average pool and returns flat penultimate features; on 32x32 inputs
that equals the reference `avg_pool2d(out, 4)` (ResNets) and `avg_pool2d(out, 8)` (WRN).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.registry import ModelInput, register_model, scaled

RESNET_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


@register_model("small_cnn", stages=("0", "2", "4"))
def _small_cnn(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """Two 3x3 conv blocks and a global average pool: seconds per epoch on digits on a CPU."""
    c1, c2 = scaled(32, width), scaled(64, width)
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


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    """The 1x1 conv + batch norm shortcut, or identity when shapes already agree."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """The ResNet basic block (two 3x3 convs, batch norm, identity or 1x1 shortcut)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """The ResNet bottleneck block (1x1, 3x3, 1x1 convs; output planes * expansion 4)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


# The pre-rename resnet18 body was one nn.Sequential: 0 conv, 1 bn, 2 relu, 3..10 the blocks.
_LEGACY_RESNET18 = re.compile(r"^(\d+)\.(.*)$")


def upgrade_legacy_resnet18_key(key: str) -> str:
    """Map a key of the old Sequential resnet18 body ('3.conv1.weight') to 'layer1.0.conv1...'."""
    match = _LEGACY_RESNET18.match(key)
    if match is None:
        return key
    index, rest = int(match.group(1)), match.group(2)
    if index == 0:
        return f"conv1.{rest}"
    if index == 1:
        return f"bn1.{rest}"
    if 3 <= index <= 10:
        return f"layer{(index - 3) // 2 + 1}.{(index - 3) % 2}.{rest}"
    return key


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stem, no max-pool, four stages, global average pool."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        in_channels: int,
        width: float,
        *,
        accept_legacy_keys: bool = False,
    ) -> None:
        super().__init__()
        planes = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        cin = planes[0]
        stages: list[nn.Sequential] = []
        for i, (p, n) in enumerate(zip(planes, num_blocks, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(block(cin, p, 2 if i > 0 and j == 0 else 1))
                cin = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_dim = cin
        self._accept_legacy_keys = accept_legacy_keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checkpoints written before the rename (Sequential body: 'body.3.conv1.weight') still
        # load: their keys are renamed in place before this module and its children read them.
        if self._accept_legacy_keys:
            for key in [k for k in state_dict if k.startswith(prefix)]:
                new = prefix + upgrade_legacy_resnet18_key(key[len(prefix) :])
                if new != key and new not in state_dict:
                    state_dict[new] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_model("resnet18", stages=RESNET_STAGES)
def _resnet18(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), channels 64-512 times width."""
    body = CifarResNet(BasicBlock, (2, 2, 2, 2), inputs.channels, width, accept_legacy_keys=True)
    return body, body.out_dim


@register_model("resnet50", stages=RESNET_STAGES)
def _resnet50(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """CIFAR-style ResNet-50 (bottlenecks, expansion 4): 2048 features at width 1."""
    body = CifarResNet(Bottleneck, (3, 4, 6, 3), inputs.channels, width)
    return body, body.out_dim


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU before each conv, 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images, as in Rice et al. 2020; final BN-ReLU then pool."""

    def __init__(self, num_blocks: tuple[int, int, int, int], in_channels: int, width: float):
        super().__init__()
        planes = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, padding=1, bias=False)
        cin = planes[0]
        stages: list[nn.Sequential] = []
        for i, (p, n) in enumerate(zip(planes, num_blocks, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(PreActBlock(cin, p, 2 if i > 0 and j == 0 else 1))
                cin = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@register_model("preact_resnet18", stages=("conv1", "layer1", "layer2", "layer3", "layer4", "bn"))
def _preact_resnet18(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """Pre-activation ResNet-18 (Rice et al. 2020), channels 64-512 times width."""
    body = PreActResNet((2, 2, 2, 2), inputs.channels, width)
    return body, body.out_dim


class WideBasicBlock(nn.Module):
    """WideResNet block: BN-ReLU-conv twice; a 1x1 conv shortcut on the pre-activated input.

    As in RobustBench/TRADES: when the block changes shape, the pre-activation replaces the
    input and `convShortcut` projects it; otherwise the identity shortcut takes the raw input.
    """

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        # The reference tests only cin == cout; a stride-2 block always projects here, which
        # only differs where the reference would fail on mismatched shapes.
        self.equal_in_out = cin == cout and stride == 1
        shortcut = None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.add_module("convShortcut", shortcut)  # the reference's name, so checkpoints map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        if self.equal_in_out:
            return x + out
        projection: nn.Module = self.get_submodule("convShortcut")
        return projection(pre) + out


class NetworkBlock(nn.Module):
    """A WideResNet stage: `layer`, a Sequential of blocks (the reference's nesting)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-depth-k (Zagoruyko & Komodakis 2016): 16-channel stem, three wide stages."""

    def __init__(self, depth: int, widen: float, in_channels: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        stem = 16
        widths = [scaled(c, widen) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, stem, widths[0], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[0], widths[1], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.out_dim = widths[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


WRN_STAGES = ("conv1", "block1", "block2", "block3", "bn1")


@register_model("wrn28_10", stages=WRN_STAGES)
def _wrn28_10(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """WideResNet-28-10, dropout 0; width scales the widen factor (0.1 gives WRN-28-1)."""
    body = WideResNet(28, 10 * width, inputs.channels)
    return body, body.out_dim


@register_model("wrn34_10", stages=WRN_STAGES)
def _wrn34_10(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """WideResNet-34-10 (TRADES, Zhang et al. 2019, and most of RobustBench's CIFAR entries),
    dropout 0; width scales the widen factor."""
    body = WideResNet(34, 10 * width, inputs.channels)
    return body, body.out_dim


class DMBlock(nn.Module):
    """A DeepMind WideResNet block: activation(BN) of the input feeds a 3x3 conv padded by hand
    ('SAME' in TensorFlow: one pixel on every side at stride 1, only right and bottom at stride
    2) and BN-activation-conv; the shortcut is the identity, or a 1x1 conv of the activated input
    where the block changes shape."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"a DeepMind WideResNet block has stride 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = nn.SiLU()  # Swish: x * sigmoid(x)
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = nn.SiLU()
        self.conv_1 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
        projects = cin != cout or stride != 1
        self.add_module(
            "shortcut", nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if projects else None
        )
        self.projects = projects

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(F.pad(pre, self.pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        if self.projects:
            projection: nn.Module = self.get_submodule("shortcut")
            return projection(pre) + out
        return x + out


class DMBlockGroup(nn.Module):
    """A stage of blocks, `block` (the reference's nesting)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *(DMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DeepMind's WideResNet-depth-k with Swish: 16-channel stem, three stages, BN-Swish, a
    global average pool (the reference's avg_pool2d(out, 8) on 32x32 inputs)."""

    def __init__(self, depth: int, widen: float, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [scaled(c, widen) for c in (16, 32, 64)]
        self.init_conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, 16, widths[0], 1),
            DMBlockGroup(n, widths[0], widths[1], 2),
            DMBlockGroup(n, widths[1], widths[2], 2),
        )
        self.batchnorm = nn.BatchNorm2d(widths[2])
        self.relu = nn.SiLU()
        self.out_dim = widths[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.batchnorm(self.layer(self.init_conv(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@register_model("wrn70_16", stages=("init_conv", "layer.0", "layer.1", "layer.2", "batchnorm"))
def _wrn70_16(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
    """WideResNet-70-16 in DeepMind's layout with Swish (RobustBench's DMWideResNet, 267M
    parameters); width scales the widen factor (0.0625 gives WRN-70-1)."""
    body = DMWideResNet(70, 16 * width, inputs.channels)
    return body, body.out_dim
