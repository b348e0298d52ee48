"""External checkpoint import: each format round-trips onto a fresh model; bad files are refused."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.published import (
    network,
    robustbench_file,
    robustness_file,
    safetensors_file,
    torchvision_file,
)
from trainables.catalog import list_models
from trainables.checkpoint_import import (
    MAPPINGS,
    CheckpointImportError,
    ImportReport,
    load_external_checkpoint,
)
from trainables.config import ArchRef
from trainables.models import Classifier, ModelInput, build_model

pytestmark = pytest.mark.unit

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def make_source(
    arch: str,
    width: float,
    mean: tuple[float, ...] = CIFAR_MEAN,
    std: tuple[float, ...] = CIFAR_STD,
) -> Classifier:
    """One of our models with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    model = build_model(ArchRef(arch, width), ModelInput(3, 32, mean, std), 10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def fresh(arch: str, width: float) -> Classifier:
    """The same arch built with other weights and another normaliser (0.5, 0.25)."""
    torch.manual_seed(1)
    return build_model(ArchRef(arch, width), ModelInput(3, 32, (0.5,) * 3, (0.25,) * 3), 10)


def assert_same_function(source: Classifier, loaded: Classifier) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(source(x), loaded.eval()(x), atol=1e-6)


def test_robustness_resnet18_maps_onto_ours(tmp_path: Path) -> None:
    source = make_source("resnet18", 0.25)
    path = robustness_file(tmp_path / "cifar_l2_0_5.pt", source, head="linear")
    target = fresh("resnet18", 0.25)
    report = load_external_checkpoint(path, target)
    assert report.format == "robustness" and report.normalization == "checkpoint"
    assert report.mean == pytest.approx(CIFAR_MEAN) and report.std == pytest.approx(CIFAR_STD)
    assert torch.allclose(target.normalize.mean.flatten(), torch.tensor(CIFAR_MEAN))
    assert report.tensors_loaded == len(target.state_dict())
    assert report.ignored_keys and all(k.startswith("attacker.") for k in report.ignored_keys)
    assert "attacker.model.linear.weight" in report.ignored_keys
    assert_same_function(source, target)


def test_robustness_imagenet_resnet_maps_onto_torchvision(tmp_path: Path) -> None:
    source = make_source("tv_resnet18", 1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    path = robustness_file(tmp_path / "imagenet_linf_4.pt", source, head="fc")
    target = fresh("tv_resnet18", 1.0)
    report = load_external_checkpoint(path, target, format="robustness")
    assert report.mean == pytest.approx((0.485, 0.456, 0.406))
    assert_same_function(source, target)


def test_robustbench_wrn_without_normaliser_gets_the_identity(tmp_path: Path) -> None:
    source = make_source("wrn28_10", 0.1, *IDENTITY)  # the external net sees raw [0, 1] inputs
    sd = {f"module.{k}": v for k, v in network(source, "fc").items()}
    sd["module.sub_block1.layer.0.bn1.weight"] = torch.ones(16)  # TRADES-style unused block
    path = tmp_path / "Carmon2019Unlabeled.pt"
    torch.save({"state_dict": sd}, path)
    target = fresh("wrn28_10", 0.1)
    report = load_external_checkpoint(path, target)
    assert report.format == "robustbench" and report.normalization == "identity"
    assert report.mean == IDENTITY[0] and report.std == IDENTITY[1]
    assert report.ignored_keys == ("sub_block1.layer.0.bn1.weight",)
    assert_same_function(source, target)


def test_robustbench_wrn_logits_head_and_hard_coded_normalisation(tmp_path: Path) -> None:
    source = make_source("wrn28_10", 0.1, (0.5,) * 3, (0.5,) * 3)  # e.g. `x = 2 * x - 1`
    path = tmp_path / "wrn.pt"
    torch.save(network(source, "logits"), path)
    target = fresh("wrn28_10", 0.1)
    report = load_external_checkpoint(
        path, target, format="robustbench", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    assert report.normalization == "override" and report.mean == (0.5,) * 3
    assert report.tensors_loaded == len(target.state_dict()) - 2
    assert_same_function(source, target)


def test_robustbench_wrn34_10_maps_like_wrn28_10(tmp_path: Path) -> None:
    source = make_source("wrn34_10", 0.1, *IDENTITY)
    sd = {f"module.{k}": v for k, v in network(source, "fc").items()}
    assert "module.block3.layer.4.convShortcut.weight" not in sd  # 5 blocks a group
    assert "module.block2.layer.0.convShortcut.weight" in sd
    path = tmp_path / "models" / "cifar10" / "Linf" / "Zhang2019Theoretically.pt"
    path.parent.mkdir(parents=True)
    torch.save(sd, path)  # at RobustBench's cache path
    target = fresh("wrn34_10", 0.1)
    report = load_external_checkpoint(path, target)
    assert (report.format, report.arch, report.normalization) == (
        "robustbench",
        "wrn34_10",
        "identity",
    )
    assert_same_function(source, target)


def test_robustbench_wrn70_16_needs_the_normalisation_its_code_sets(tmp_path: Path) -> None:
    """DMWideResNet keeps mean and std out of its state dict: importing one without them is
    refused with the constants to pass, never loaded as if it saw raw pixels."""
    source = make_source("wrn70_16", 0.0625)  # CIFAR-10's mean and std
    sd = {f"module.{k}": v for k, v in network(source, "logits").items()}
    assert {"module.init_conv.weight", "module.layer.2.block.10.conv_0.weight"} <= set(sd)
    path = tmp_path / "Gowal2020Uncovering_70_16.pt"
    torch.save(sd, path)
    target = fresh("wrn70_16", 0.0625)
    with pytest.raises(CheckpointImportError, match=r"pass mean= and std=.*0\.4914"):
        load_external_checkpoint(path, target)
    report = load_external_checkpoint(path, target, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert (report.format, report.normalization) == ("robustbench", "override")
    assert report.tensors_loaded == len(target.state_dict()) - 2
    assert_same_function(source, target)


def test_robustbench_preact_resnet_with_mu_sigma_buffers(tmp_path: Path) -> None:
    source = make_source("preact_resnet18", 0.25)
    sd = network(source, "linear")
    sd["mu"], sd["sigma"] = source.normalize.mean.clone(), source.normalize.std.clone()
    path = tmp_path / "Rice2020Overfitting.pt"
    torch.save(sd, path)
    target = fresh("preact_resnet18", 0.25)
    report = load_external_checkpoint(path, target)
    assert report.format == "robustbench" and report.mean == pytest.approx(CIFAR_MEAN)
    assert_same_function(source, target)


def test_robustbench_imagenet_normalize_model_wrapper(tmp_path: Path) -> None:
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    source = make_source("tv_resnet18", 1.0, *imagenet)
    sd = {f"model.{k}": v for k, v in network(source, "fc").items()}
    sd["normalize.mean"] = source.normalize.mean.clone()
    sd["normalize.std"] = source.normalize.std.clone()
    path = tmp_path / "Salman2020Do_R18.pt"
    torch.save(sd, path)
    target = fresh("tv_resnet18", 1.0)
    report = load_external_checkpoint(path, target)
    assert report.format == "robustbench" and report.std == pytest.approx(imagenet[1])
    assert_same_function(source, target)


@pytest.mark.parametrize("arch", ["tv_resnet18", "tv_resnet50"])
def test_torchvision_state_dict_gets_imagenet_normalisation(tmp_path: Path, arch: str) -> None:
    """torchvision's weights expect the ImageNet mean and std of its transforms: the import
    puts them in our Normalize, since the file holds no normaliser."""
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    source = make_source(arch, 1.0, *imagenet)
    path = torchvision_file(tmp_path / f"{arch}.pth", source)
    target = fresh(arch, 1.0)
    report = load_external_checkpoint(path, target, format="torchvision")
    assert (report.format, report.normalization) == ("torchvision", "default")
    assert report.mean == pytest.approx(imagenet[0]) and report.std == pytest.approx(imagenet[1])
    assert_same_function(source, target)


def test_a_head_of_another_class_count_names_both(tmp_path: Path) -> None:
    source = make_source("resnet18", 0.25)  # 10 classes
    path = robustness_file(tmp_path / "r18.pt", source, head="linear")
    target = build_model(ArchRef("resnet18", 0.25), ModelInput(3, 32, (0.5,) * 3, (0.25,) * 3), 5)
    with pytest.raises(CheckpointImportError, match=r"head has 10 classes but the model's .* 5"):
        load_external_checkpoint(path, target)


def test_own_state_dict_with_module_prefix(tmp_path: Path) -> None:
    source = make_source("small_cnn", 0.25)
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    target = fresh("small_cnn", 0.25)
    report = load_external_checkpoint(path, target)
    assert report.format == "state_dict" and report.normalization == "checkpoint"
    assert report.tensors_loaded == len(target.state_dict())
    assert_same_function(source, target)


def test_own_state_dict_without_normaliser_is_refused(tmp_path: Path) -> None:
    source = make_source("small_cnn", 0.25)
    path = tmp_path / "no_norm.pt"
    torch.save({k: v for k, v in source.state_dict().items() if "normalize" not in k}, path)
    with pytest.raises(CheckpointImportError, match=r"(?s)'state_dict'.*missing: normalize\.mean"):
        load_external_checkpoint(path, fresh("small_cnn", 0.25), format="state_dict")


def test_own_resnet18_state_dict_with_pre_rename_keys(tmp_path: Path) -> None:
    source = make_source("resnet18", 0.25)
    renamed = {"body.conv1.": "body.0.", "body.bn1.": "body.1.", "body.layer1.0.": "body.3."}
    renamed["body.layer4.1."] = "body.10."
    sd = {}
    for key, value in source.state_dict().items():
        for new, old in renamed.items():
            if key.startswith(new):
                key = old + key.removeprefix(new)
        sd[key] = value
    assert "body.0.weight" in sd and "body.10.conv1.weight" in sd
    path = tmp_path / "legacy.pt"
    torch.save(sd, path)
    target = fresh("resnet18", 0.25)
    assert load_external_checkpoint(path, target).format == "state_dict"
    assert_same_function(source, target)


@pytest.mark.parametrize("name", ["model.safetensors", "weights.bin"])
def test_own_safetensors_by_extension_or_header(tmp_path: Path, name: str) -> None:
    source = make_source("resnet50", 0.25)
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = fresh("resnet50", 0.25)
    report = load_external_checkpoint(path, target)
    assert report.format == "safetensors" and report.mean == pytest.approx(CIFAR_MEAN)
    assert_same_function(source, target)


def test_old_checkpoints_without_num_batches_tracked_are_defaulted(tmp_path: Path) -> None:
    source = make_source("resnet18", 0.25)
    sd = {k: v for k, v in network(source, "linear").items() if "num_batches_tracked" not in k}
    path = tmp_path / "old_torch.pt"
    torch.save(sd, path)
    report = load_external_checkpoint(path, fresh("resnet18", 0.25), format="robustbench")
    assert report.defaulted_keys and all(
        k.endswith("num_batches_tracked") for k in report.defaulted_keys
    )


def test_wrong_arch_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "wrn.pt"
    torch.save(network(make_source("wrn28_10", 0.1), "fc"), path)
    with pytest.raises(CheckpointImportError) as err:
        load_external_checkpoint(path, fresh("preact_resnet18", 0.25))
    message = str(err.value)
    assert str(path) in message and "'robustbench'" in message and "'preact_resnet18'" in message
    assert "missing (first 10 of" in message and "body.layer1.0.conv1.weight" in message
    assert "unexpected (first 10 of" in message and "body.block1.layer.0.conv1.weight" in message
    assert "Fix:" in message and "format=" in message


def test_wrong_width_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    path = robustness_file(tmp_path / "r18.pt", make_source("resnet18", 0.25), head="linear")
    with pytest.raises(
        CheckpointImportError,
        match=r"body\.conv1\.weight: checkpoint \(16, 3, 3, 3\) vs model \(32, 3, 3, 3\)",
    ):
        load_external_checkpoint(path, fresh("resnet18", 0.5))


def test_format_without_a_mapping_for_the_arch(tmp_path: Path) -> None:
    path = robustness_file(tmp_path / "r18.pt", make_source("resnet18", 0.25), head="linear")
    with pytest.raises(
        CheckpointImportError, match=r"no key mapping for format 'robustness' onto arch 'small_cnn'"
    ):
        load_external_checkpoint(path, fresh("small_cnn", 0.25))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    source = make_source("small_cnn", 0.25)
    path = tmp_path / f"cut{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), path)
    else:
        save_file(dict(source.state_dict()), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointImportError, match=rf"(?s){path.name}.*truncated"):
        load_external_checkpoint(path, fresh("small_cnn", 0.25))


class WritesAFile:
    """Unpickling this calls open(marker, 'w'): arbitrary code run by a plain pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"model": {"conv.weight": torch.zeros(1)}, "extra": WritesAFile(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    with pytest.raises(
        CheckpointImportError, match=r"(?s)refused to load .*evil\.pt.*could run code"
    ):
        load_external_checkpoint(path, fresh("small_cnn", 0.25))
    assert not marker.exists()


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(CheckpointImportError, match="does not exist"):
        load_external_checkpoint(tmp_path / "nope.pt", fresh("small_cnn", 0.25))
    with pytest.raises(CheckpointImportError, match="unknown format 'timm'"):
        load_external_checkpoint(tmp_path / "nope.pt", fresh("small_cnn", 0.25), format="timm")


def test_report_is_a_plain_record() -> None:
    fields = ImportReport.__dataclass_fields__
    assert {"format", "tensors_loaded", "mean", "std", "ignored_keys"} <= set(fields)


# Small widths where an arch has a width multiplier; the torchvision models are full size.
WIDTHS = {"wrn28_10": 0.1, "wrn34_10": 0.1, "wrn70_16": 0.0625, "small_cnn": 0.25}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
EVERY_PAIR = sorted(
    {*MAPPINGS, *((f, a) for f in ("state_dict", "safetensors") for a in list_models())}
)


def write_in_format(folder: Path, fmt: str, arch: str, source: Classifier) -> Path:
    """source saved the way `fmt`'s library saves it (RobustBench's at its cache path)."""
    if fmt == "robustness":
        return robustness_file(folder / f"{arch}.pt", source, MAPPINGS[(fmt, arch)].head[0])
    if fmt == "robustbench":
        path = folder / "models" / "cifar10" / "Linf" / f"{arch}.pt"
        return robustbench_file(path, source, MAPPINGS[(fmt, arch)].head[0])
    if fmt == "torchvision":
        return torchvision_file(folder / f"{arch}.pth", source)
    if fmt == "safetensors":
        return safetensors_file(folder / f"{arch}.safetensors", source)
    path = folder / f"{arch}.pt"
    torch.save(source.state_dict(), path)
    return path


@pytest.mark.parametrize("fmt,arch", EVERY_PAIR, ids=lambda v: str(v))
def test_every_format_and_arch_pair_imports_the_same_function(
    tmp_path: Path, fmt: str, arch: str
) -> None:
    """Every (format, arch) pair the README lists: the file loads strictly onto a fresh model,
    which then computes what the network that was saved computes."""
    width = WIDTHS.get(arch, 0.25 if arch.startswith(("resnet", "preact")) else 1.0)
    stats = IMAGENET if fmt == "torchvision" else (CIFAR_MEAN, CIFAR_STD)
    source = make_source(arch, width, *stats)
    path = write_in_format(tmp_path, fmt, arch, source)
    target = fresh(arch, width)
    report = load_external_checkpoint(path, target, format=fmt)
    assert report.format == fmt and report.arch == arch
    assert report.mean == pytest.approx(stats[0]) and report.std == pytest.approx(stats[1])
    assert_same_function(source, target)


def test_an_external_state_dict_exported_to_safetensors_keeps_its_format(tmp_path: Path) -> None:
    """A robustness checkpoint that torch.load(weights_only=True) refuses (pickled with dill)
    is converted once where it is trusted: its 'model' dict saved as safetensors, which then
    imports with its own format's mapping, named or detected from its keys."""
    source = make_source("resnet18", 0.25)
    pickled = torch.load(
        robustness_file(tmp_path / "r18.pt", source, head="linear"), weights_only=True
    )
    path = tmp_path / "r18.safetensors"
    save_file({k: v.clone().contiguous() for k, v in pickled["model"].items()}, str(path))
    for fmt in ("robustness", "auto"):
        target = fresh("resnet18", 0.25)
        report = load_external_checkpoint(path, target, format=fmt)
        assert report.format == "robustness" and report.normalization == "checkpoint"
        assert_same_function(source, target)
