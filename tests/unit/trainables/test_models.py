"""The model registry: every architecture runs forward and backward (the contract)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from trainables.catalog import list_models
from trainables.config import ArchRef
from trainables.models import (
    Classifier,
    ModelInput,
    Normalize,
    build_model,
    model_family,
    model_stages,
)

pytestmark = pytest.mark.unit

CIFAR_INPUTS = [
    ModelInput(3, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
    ModelInput(1, 28, (0.3,), (0.4,)),
]
IMAGENET_INPUTS = [ModelInput(3, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]


def contract_cases() -> list[tuple[str, float, ModelInput]]:
    """CIFAR-style models at width 0.25 on 3x32x32 and 1x28x28; torchvision ones at width 1."""
    cases = []
    for name in list_models():
        if model_family(name) == "cifar":
            cases += [(name, 0.25, inputs) for inputs in CIFAR_INPUTS]
        else:
            cases += [(name, 1.0, inputs) for inputs in IMAGENET_INPUTS]
    return cases


@pytest.mark.parametrize(
    ("name", "width", "inputs"),
    contract_cases(),
    ids=[f"{n}-w{w:g}-{i.channels}x{i.size}" for n, w, i in contract_cases()],
)
def test_every_model_runs_forward_and_backward(name: str, width: float, inputs: ModelInput) -> None:
    torch.manual_seed(0)
    model = build_model(ArchRef(name, width), inputs, num_classes=5)
    x = torch.rand(2, inputs.channels, inputs.size, inputs.size)
    features = model.features(x)
    logits = model.head(features)
    assert features.shape == (2, model.feature_dim)
    assert logits.shape == (2, 5)
    assert torch.allclose(model(x), logits, atol=1e-5)
    logits.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"
    assert model.arch == name
    for stage in model_stages(name):
        model.body.get_submodule(stage)  # every listed stage names a body submodule


def test_normalisation_is_inside_the_model() -> None:
    inputs = ModelInput(channels=1, size=8, mean=(0.5,), std=(0.25,))
    model = build_model(ArchRef("small_cnn"), inputs, num_classes=3).eval()
    x = torch.rand(2, 1, 8, 8)
    expected = model.head(model.body((x - 0.5) / 0.25))
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert "normalize.mean" in model.state_dict()


def test_width_multiplier_scales_the_network() -> None:
    inputs = ModelInput(channels=1, size=8, mean=(0.3,), std=(0.4,))
    small = build_model(ArchRef("resnet18", 0.25), inputs, 5)
    big = build_model(ArchRef("resnet18", 0.5), inputs, 5)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert small.feature_dim == 128 and big.feature_dim == 256
    assert 3 < n(big) / n(small) < 5


@pytest.mark.parametrize(
    ("name", "width", "dim"),
    [("resnet50", 0.25, 512), ("preact_resnet18", 0.5, 256), ("wrn28_10", 0.1, 64)],
)
def test_width_scales_the_features_of_every_cifar_model(name: str, width: float, dim: int) -> None:
    model = build_model(ArchRef(name, width), ModelInput(3, 8, (0.0,) * 3, (1.0,) * 3), 2)
    assert model.feature_dim == dim


def test_wrn_width_scales_the_widen_factor_and_keeps_the_16_channel_stem() -> None:
    inputs = ModelInput(3, 8, (0.0,) * 3, (1.0,) * 3)
    wrn_28_1 = build_model(ArchRef("wrn28_10", 0.1), inputs, 10).state_dict()
    assert wrn_28_1["body.conv1.weight"].shape == (16, 3, 3, 3)
    # 16 -> 16: the first block keeps the identity shortcut, as in WRN-28-1.
    assert "body.block1.layer.0.convShortcut.weight" not in wrn_28_1
    assert wrn_28_1["body.block2.layer.0.convShortcut.weight"].shape == (32, 16, 1, 1)
    wider = build_model(ArchRef("wrn28_10", 0.25), inputs, 10).state_dict()
    assert wider["body.block1.layer.0.convShortcut.weight"].shape == (40, 16, 1, 1)
    assert (
        sum(k.startswith("body.block3.layer.") and k.endswith("conv2.weight") for k in wider) == 4
    )


def test_state_dict_names_follow_the_reference_libraries() -> None:
    inputs = ModelInput(3, 8, (0.0,) * 3, (1.0,) * 3)
    keys = set(build_model(ArchRef("resnet18", 0.25), inputs, 10).state_dict())
    assert {"body.conv1.weight", "body.bn1.running_var", "body.layer1.1.conv2.weight"} <= keys
    assert {"body.layer2.0.shortcut.0.weight", "body.layer4.1.bn2.weight", "head.bias"} <= keys
    preact = set(build_model(ArchRef("preact_resnet18", 0.25), inputs, 10).state_dict())
    assert {
        "body.bn.weight",
        "body.layer1.0.bn1.weight",
        "body.layer3.0.shortcut.0.weight",
    } <= preact
    tv = build_model(ArchRef("tv_resnet18"), inputs, 10).state_dict()
    reference = torchvision.models.resnet18(weights=None).state_dict()
    assert {k.removeprefix("body.") for k in tv if k.startswith("body.")} == {
        k for k in reference if not k.startswith("fc.")
    }


def test_old_sequential_resnet18_state_dicts_still_load() -> None:
    inputs = ModelInput(3, 32, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    source = build_model(ArchRef("resnet18", 0.25), inputs, 10).eval()
    old_names = {"conv1": "0", "bn1": "1"} | {
        f"layer{i // 2 + 1}.{i % 2}": str(i + 3) for i in range(8)
    }

    def to_old(key: str) -> str:
        for new, old in sorted(old_names.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(f"body.{new}."):
                return f"body.{old}." + key.removeprefix(f"body.{new}.")
        return key

    legacy = {to_old(k): v for k, v in source.state_dict().items()}
    assert "body.3.conv1.weight" in legacy and "body.10.bn2.weight" in legacy
    target = build_model(ArchRef("resnet18", 0.25), inputs, 10).eval()
    target.load_state_dict(legacy)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(source(x), target(x))


def test_torchvision_models_adapt_conv1_to_the_input_channels() -> None:
    model = build_model(ArchRef("tv_resnet18"), ModelInput(1, 28, (0.3,), (0.4,)), 4).eval()
    assert model.body.conv1.in_channels == 1
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 4)


def test_torchvision_models_refuse_a_width_other_than_one() -> None:
    with pytest.raises(ValueError, match=r"tv_resnet50.*width must be 1\.0, got 0\.5.*set width 1"):
        build_model(ArchRef("tv_resnet50", 0.5), ModelInput(3, 32, (0.0,) * 3, (1.0,) * 3), 10)


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(KeyError) as err:
        build_model(ArchRef("vgg"), ModelInput(1, 8, (0.0,), (1.0,)), 2)
    assert ", ".join(list_models()) in str(err.value)
    assert {"resnet18", "resnet50", "preact_resnet18", "wrn28_10", "tv_wide_resnet50_2"} <= set(
        list_models()
    )


def test_classifier_keeps_its_positional_constructor() -> None:
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model = Classifier(Normalize((0.0,), (1.0,)), body, 3, 2)
    assert model.arch is None and model(torch.rand(2, 1, 2, 2)).shape == (2, 2)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_zoos_wide_resnets_have_the_reference_parameter_counts() -> None:
    """Counts of RobustBench's WideResNet(depth=34, widen_factor=10) and of its DMWideResNet
    (depth=70, width=2, 100 classes), built from its sources when these bodies were written."""
    cifar = ModelInput(3, 32, (0.5,) * 3, (0.25,) * 3)
    assert n_parameters(build_model(ArchRef("wrn34_10"), cifar, 10)) == 46_160_474
    # WRN-70-16 itself (266,796,506 parameters) at 1/8 of its width: WRN-70-2.
    assert n_parameters(build_model(ArchRef("wrn70_16", 0.125), cifar, 100)) == 4_194_996


def test_wrn70_16_names_its_tensors_as_deepminds_wide_resnet() -> None:
    keys = set(
        build_model(
            ArchRef("wrn70_16", 0.0625), ModelInput(3, 8, (0.0,) * 3, (1.0,) * 3), 10
        ).state_dict()
    )
    assert {
        "body.init_conv.weight",
        "body.layer.0.block.0.batchnorm_0.running_mean",
        "body.layer.1.block.0.shortcut.weight",  # 16 -> 32 channels: a projection
        "body.layer.2.block.10.conv_1.weight",  # 11 blocks a group: (70 - 4) / 6
        "body.batchnorm.weight",
        "head.weight",
    } <= keys
    # WRN-70-1 keeps 16 channels in the first group: identity shortcuts, as the reference.
    assert not any(k.startswith("body.layer.0.block.0.shortcut") for k in keys)
    assert not any(k.startswith("body.layer.1.block.1.shortcut") for k in keys)
    assert not any(k.startswith("body.layer.2.block.11.") for k in keys)


def test_a_deepmind_block_pads_like_tensorflows_same_at_stride_2() -> None:
    """At stride 2 the 3x3 conv is padded on the right and bottom only: output (0, 0) of the
    block sees input rows and columns 0-4 (its second conv reads first-conv outputs 0-1), never
    the row before 0 that symmetric padding would add."""
    from trainables.models.cifar import DMBlock

    torch.manual_seed(0)
    block = DMBlock(4, 8, 2).eval()
    x = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (1, 8, 8, 8)

    def change_at_origin(row: int, col: int) -> float:
        moved = x.clone()
        moved[0, 0, row, col] += 1.0
        with torch.no_grad():
            return float((block(moved) - out)[0, :, 0, 0].abs().max())

    assert change_at_origin(4, 4) > 1e-4  # reached through the right/bottom-padded first conv
    assert change_at_origin(5, 5) == 0.0  # beyond it
