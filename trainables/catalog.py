"""The names of the datasets and architectures, and what is known of a dataset before loading it.

This module imports no torch, so that validating a sweep spec (`study validate`, the driver
before Ray starts) costs no torch import. `trainables.data` attaches a loader to each dataset
name here and `trainables.models` a builder to each model name: their register_dataset,
register_image_folder and register_model add the name here too, so a user's registration is
seen by spec validation in the same process. A test checks that the built-in entries below and
the torch-side registrations agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


class DataMissingError(FileNotFoundError):
    """A dataset's files are not where they were looked for (and download is off)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing it."""

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    # Read from image files (decoded per item, through worker processes) rather than held in
    # memory: its train and test views follow trainables.data.loader's recipe.
    files: bool = False


# Datasets of this side and more get the ImageNet recipe (trainables.data.loader): resize 256 and
# centre crop 224 at test time, RandomResizedCrop as the standard train augmentation.
STANDARD_RECIPE_SIZE = 128

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_sized(name: str, num_classes: int, description: str) -> DatasetInfo:
    """A file-based dataset read as 224x224 RGB crops with ImageNet's statistics."""
    return DatasetInfo(
        name, num_classes, 3, 224, IMAGENET_MEAN, IMAGENET_STD, description, files=True
    )


_BUILTIN_DATASETS = (
    DatasetInfo(
        "digits",
        10,
        1,
        8,
        (0.305,),
        (0.389,),
        "scikit-learn's bundled 8x8 handwritten digits (offline)",
    ),
    DatasetInfo(
        "cifar10",
        10,
        3,
        32,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "CIFAR-10: 50000/10000 32x32 colour images of 10 classes (Krizhevsky, 2009)",
    ),
    DatasetInfo(
        "cifar100",
        100,
        3,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "CIFAR-100: 50000/10000 32x32 colour images of 100 fine classes (Krizhevsky, 2009)",
    ),
    DatasetInfo(
        "svhn",
        10,
        3,
        32,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        "SVHN: 73257/26032 32x32 cropped house-number digits (Netzer et al., 2011)",
    ),
    DatasetInfo(
        "stl10",
        10,
        3,
        96,
        (0.4467, 0.4398, 0.4066),
        (0.2603, 0.2566, 0.2713),
        "STL-10: 5000/8000 labelled 96x96 colour images of 10 classes (Coates et al., 2011)",
    ),
    DatasetInfo(
        "mnist",
        10,
        1,
        28,
        (0.1307,),
        (0.3081,),
        "MNIST: 60000/10000 28x28 handwritten digits (LeCun et al., 1998)",
    ),
    DatasetInfo(
        "fashion_mnist",
        10,
        1,
        28,
        (0.2860,),
        (0.3530,),
        "Fashion-MNIST: 60000/10000 28x28 greyscale Zalando product images (Xiao et al., 2017)",
    ),
    _imagenet_sized(
        "imagenet",
        1000,
        "ImageNet ILSVRC-2012: 1.28M train / 50000 val images of 1000 classes, 224x224 crops",
    ),
    _imagenet_sized(
        "flowers102",
        102,
        "Oxford Flowers-102: 2040 train+val / 6149 test images of 102 flower species",
    ),
    _imagenet_sized(
        "dtd",
        47,
        "Describable Textures (DTD), partition 1: 1880 train / 1880 test images of 47 textures",
    ),
    _imagenet_sized(
        "oxford_pets",
        37,
        "Oxford-IIIT Pet: 3680 trainval / 3669 test images of 37 cat and dog breeds",
    ),
    _imagenet_sized(
        "fgvc_aircraft",
        100,
        "FGVC-Aircraft 2013b, variants: 6667 trainval / 3333 test images of 100 aircraft variants",
    ),
    _imagenet_sized("food101", 101, "Food-101: 75750 train / 25250 test images of 101 dishes"),
    _imagenet_sized(
        "caltech101",
        101,
        "Caltech-101: 8677 images of 101 object categories (no background class, no official "
        "split: split here, seeded and stratified)",
    ),
    _imagenet_sized(
        "stanford_cars", 196, "Stanford Cars: 8144 train / 8041 test images of 196 car models"
    ),
    _imagenet_sized(
        "sun397",
        397,
        "SUN397: 108754 scene images of 397 categories (no official split: split here, seeded "
        "and stratified)",
    ),
    DatasetInfo(
        "cinic10",
        10,
        3,
        32,
        (0.4789, 0.4723, 0.4305),
        (0.2421, 0.2383, 0.2587),
        "CINIC-10: CIFAR-10 classes from CIFAR and downsampled ImageNet, 32x32 (Darlow et al., "
        "2018), in ROOT/cinic10/{train,test}/CLASS",
        files=True,
    ),
    _imagenet_sized(
        "cub200",
        200,
        "Caltech-UCSD Birds-200-2011: 5994 train / 5794 test images of 200 species, in "
        "ROOT/cub200/{train,test}/CLASS",
    ),
)

# The datasets trainables.data ships loaders for, by name (read-only: registrations go to
# register_dataset_info).
BUILTIN_DATASETS = MappingProxyType({info.name: info for info in _BUILTIN_DATASETS})

# The architectures trainables.models ships builders for: the CIFAR-style bodies
# (trainables/models/cifar.py) and the torchvision ImageNet ones (trainables/models/imagenet.py).
BUILTIN_MODELS = (
    "small_cnn",
    "resnet18",
    "resnet50",
    "preact_resnet18",
    "wrn28_10",
    "wrn34_10",
    "wrn70_16",
    "tv_resnet18",
    "tv_resnet50",
    "tv_wide_resnet50_2",
)

_DATASETS: dict[str, DatasetInfo] = dict(BUILTIN_DATASETS)
_MODELS: set[str] = set(BUILTIN_MODELS)


def register_dataset_info(info: DatasetInfo) -> None:
    """Add (or replace) a dataset name and its info; trainables.data.register_dataset calls this
    and attaches the loader, which a trial needs and spec validation does not."""
    _DATASETS[info.name] = info


def register_model_name(name: str) -> None:
    """Add an architecture name; trainables.models.register_model calls this with its builder."""
    _MODELS.add(name)


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_DATASETS)


def get_dataset_info(name: str) -> DatasetInfo:
    """The info of a registered dataset; an unknown name lists the choices."""
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}: choose one of {', '.join(list_datasets())}")
    return _DATASETS[name]


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_MODELS)
