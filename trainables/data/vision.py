"""torchvision-backed datasets: the in-memory small ones and the file-based transfer targets.

Every dataset is read through torchvision's own dataset class, from the layout that class expects
under the data root (LoadRequest.root, else $ATSWEEP_DATA_ROOT, else ./data):

    cifar10        ROOT/cifar-10-batches-py/            cifar100      ROOT/cifar-100-python/
    svhn           ROOT/{train,test}_32x32.mat          stl10         ROOT/stl10_binary/
    mnist          ROOT/MNIST/raw/                      fashion_mnist ROOT/FashionMNIST/raw/ (*)
    imagenet       ROOT/imagenet/ (meta.bin or the devkit archive; train/, val/ or their archives;
                   ROOT itself when it holds meta.bin or the devkit archive)
    flowers102     ROOT/flowers-102/                    dtd           ROOT/dtd/dtd/
    oxford_pets    ROOT/oxford-iiit-pet/                fgvc_aircraft ROOT/fgvc-aircraft-2013b/
    food101        ROOT/food-101/                       caltech101    ROOT/caltech101/
    stanford_cars  ROOT/stanford_cars/                  sun397        ROOT/SUN397/
    cinic10        ROOT/cinic10/{train,test}/CLASS/*
    cub200         ROOT/cub200/{train,test}/CLASS/*

(*) or, offline, Debian's dataset-fashion-mnist package (FASHION_MNIST_DEBIAN_DIR), unpacked
once into ROOT/FashionMNIST/raw (or ~/.cache/atsweep/FashionMNIST/raw when ROOT is read-only).

The small datasets (CIFAR, SVHN, MNIST, Fashion-MNIST, STL-10) are held in memory as uint8
tensors; the others are TorchvisionImageSets that decode, resize and crop images on demand.
torchvision's integrity checks (md5 sums) stay on. With download off, missing files raise
DataMissingError before torchvision is asked (check_available runs the same cheap checks).
Each loader here is attached to its dataset's entry in trainables.catalog.BUILTIN_DATASETS.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from trainables import storage
from trainables.catalog import (
    BUILTIN_DATASETS,
    DataMissingError,
    DatasetInfo,
    get_dataset_info,
)
from trainables.data import (
    ImageSet,
    LoadRequest,
    TensorImageSet,
    dataset_paths,
    register_dataset,
)
from trainables.lazy import LazyModule

if TYPE_CHECKING:  # for annotations: mypy cannot see torchvision's classes through a LazyModule
    from torchvision.datasets import ImageFolder

# torchvision is imported when a dataset of it is first loaded, not when this module is.
tvd = LazyModule("torchvision.datasets")
TF = LazyModule("torchvision.transforms.v2.functional")

__all__ = [
    "FASHION_MNIST_DEBIAN_DIR",
    "TorchvisionImageSet",
    "check_available",
    "dataset_targets",
    "register_image_folder",
    "resolve_root",
    "user_cache_dir",
]

# Debian's dataset-fashion-mnist package: the four IDX files, gzipped (tests patch this).
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

T = TypeVar("T")


# --- where the data lives -------------------------------------------------------------------


def resolve_root(request: LoadRequest) -> Path:
    """The data root: request.root, else $ATSWEEP_DATA_ROOT, else ./data (made absolute)."""
    root = request.root or os.environ.get("ATSWEEP_DATA_ROOT") or "data"
    return Path(root).expanduser().absolute()


def user_cache_dir() -> Path:
    """Where unpacked copies go when the data root is read-only: $XDG_CACHE_HOME/atsweep."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "atsweep"


# --- availability checks ----------------------------------------------------------------------

_CHECKS: dict[str, Callable[[LoadRequest], object]] = {}


def _missing_error(
    name: str, label: str, root: Path, looked: Sequence[Path], fix: str
) -> DataMissingError:
    """The one-line error: the dataset, the folders searched and the fix."""
    looked_for = ", ".join(str(p) for p in looked)
    return DataMissingError(
        f"{name}: no {label} files under {root} (looked for {looked_for}): {fix}"
    )


def _fix(label: str, downloadable: bool) -> str:
    if downloadable:
        return (
            "set data.root to the folder that holds them, or data.download: true on a machine "
            "with internet"
        )
    return f"set data.root to the folder that holds them (torchvision cannot download {label})"


@dataclass(frozen=True)
class _Files:
    """What must exist for a dataset: a folder under the root, and entries inside it."""

    label: str
    folder: Callable[[Path], Path]
    entries: tuple[str, ...] = ()
    downloadable: bool = True

    def missing(self, root: Path) -> list[Path]:
        folder = self.folder(root)
        if not folder.is_dir() and folder != root:
            return [folder]
        return [folder / e for e in self.entries if not (folder / e).exists()]

    def paths(self) -> tuple[str, ...]:
        """What the dataset reads, relative to the data root (its folder, or its entries when
        they lie in the root itself)."""
        folder = self.folder(Path("."))
        return self.entries if folder == Path(".") else (folder.as_posix(),)

    def check(self, name: str, request: LoadRequest) -> Path:
        """The root, after checking the files are there (skipped when torchvision may download)."""
        root = resolve_root(request)
        if request.download and self.downloadable:
            return root
        missing = self.missing(root)
        if missing:
            raise _missing_error(
                name, self.label, root, missing, _fix(self.label, self.downloadable)
            )
        return root


def check_available(name: str, request: LoadRequest) -> None:
    """Cheap existence checks (nothing decoded): DataMissingError when a dataset is not there.

    Meant for the driver, before any trial starts. digits ships with scikit-learn and needs
    nothing; a dataset registered without a check (register_dataset elsewhere) passes.
    """
    if name == "digits":
        return
    get_dataset_info(name)  # an unknown name lists the choices
    if request.root is not None and storage.is_uri(request.root):
        _check_uri(name, request)
        return
    check = _CHECKS.get(name)
    if check is not None:
        check(request)


def _check_uri(name: str, request: LoadRequest) -> None:
    """A URI data root: what the dataset reads must be under it (unless download is on)."""
    assert request.root is not None
    paths = dataset_paths(name)
    if paths is None or request.download:
        return
    missing = [
        storage.join(request.root, p)
        for p in paths
        if not storage.exists(storage.join(request.root, p))
    ]
    if missing:
        raise DataMissingError(
            f"{name}: nothing at {', '.join(missing)}: upload the dataset's files there (the "
            f"layout under data.root that a local folder would have), or correct data.root"
        )


def _construct(name: str, root: Path, factory: Callable[[], T]) -> T:
    """Call a torchvision constructor, naming the dataset when torchvision rejects the files."""
    try:
        return factory()
    except RuntimeError as err:
        raise RuntimeError(
            f"{name}: torchvision could not read the files under {root} ({err}); they may be "
            "incomplete or corrupted: replace them with a fresh copy"
        ) from err


# --- file-based image sets --------------------------------------------------------------------


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """The labels of a torchvision dataset, read from its label attribute (nothing decoded)."""
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_targets(d) for d in dataset.datasets])
    if isinstance(dataset, tvd.StanfordCars):
        labels: Any = [label for _, label in dataset._samples]
    elif isinstance(dataset, tvd.Caltech101):
        labels = dataset.y
    elif isinstance(dataset, tvd.DatasetFolder):  # ImageFolder, ImageNet
        labels = dataset.targets
    elif hasattr(dataset, "_labels"):
        # Flowers102, DTD, OxfordIIITPet, FGVCAircraft, Food101, SUN397
        labels = dataset._labels
    elif hasattr(dataset, "targets"):
        labels = dataset.targets
    else:
        raise TypeError(f"cannot read the labels of {type(dataset).__name__} without decoding")
    return np.asarray(labels, dtype=np.int64).reshape(-1)


class TorchvisionImageSet:
    """Images read from files through a torchvision dataset, decoded on demand.

    Each image is converted to RGB (or L for one channel); get_batch returns the test view
    (trainables.data.loader: shorter side to 256 and centre crop 224 for a 224-px set), float32
    N x C x size x size in [0, 1], decoded in this process. Passes over the whole set go
    through trainables.data.loader's worker processes instead; `workers` is the data.workers
    they were asked for (None: by the CPUs held).
    """

    def __init__(
        self,
        dataset: Dataset,
        size: int,
        channels: int = 3,
        targets: np.ndarray | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.dataset = dataset
        self.size = size
        self.channels = channels
        self.workers: int | None = None
        self.targets = np.asarray(
            dataset_targets(dataset) if targets is None else targets, dtype=np.int64
        )
        n = len(dataset)  # type: ignore[arg-type]
        if len(self.targets) != n:
            raise ValueError(f"{n} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def decode(self, index: int) -> Any:
        """One image as decoded by the dataset, as a PIL image in RGB (L for one channel)."""
        image = self.dataset[index][0]
        mode = "L" if self.channels == 1 else "RGB"
        if isinstance(image, torch.Tensor):
            image = TF.to_pil_image(image)
        return image if image.mode == mode else image.convert(mode)

    def load_image(self, index: int) -> torch.Tensor:
        """One image's test view as uint8 C x size x size."""
        from trainables.data.loader import test_view

        return test_view(self.decode(index), self.size)

    def get_batch(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            return torch.empty(0, self.channels, self.size, self.size)
        batch = torch.stack([self.load_image(int(i)) for i in idx])
        return batch.float().div_(255.0)


# --- in-memory datasets -----------------------------------------------------------------------


def _nchw(images: np.ndarray | torch.Tensor, layout: str) -> torch.Tensor:
    """uint8 images as a contiguous N x C x H x W tensor, from NHWC, NCHW or NHW."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    elif layout == "nhw":
        x = x.unsqueeze(1)
    return x.to(torch.uint8).contiguous()


def _labels(targets: Any) -> np.ndarray:
    if isinstance(targets, torch.Tensor):
        targets = targets.numpy()
    return np.asarray(targets, dtype=np.int64).reshape(-1)


def _register(
    info: DatasetInfo,
    loader: Callable[[LoadRequest], tuple[ImageSet, ImageSet | None]],
    check: Callable[[LoadRequest], object],
    paths: Sequence[str],
) -> None:
    register_dataset(info, loader, paths)
    _CHECKS[info.name] = check


def _cifar(name: str, class_name: str, files: _Files) -> Callable[[LoadRequest], Any]:
    def load(request: LoadRequest) -> tuple[ImageSet, ImageSet]:
        root = files.check(name, request)

        def make(train: bool) -> Any:
            return getattr(tvd, class_name)(str(root), train=train, download=request.download)

        sets = []
        for train in (True, False):
            ds = _construct(name, root, functools.partial(make, train))
            sets.append(TensorImageSet(_nchw(ds.data, "nhwc"), _labels(ds.targets)))
        return sets[0], sets[1]

    return load


def _mnist_like(
    name: str, class_name: str, root_of: Callable[[LoadRequest], Path]
) -> Callable[[LoadRequest], Any]:
    def load(request: LoadRequest) -> tuple[ImageSet, ImageSet]:
        root = root_of(request)

        def make(train: bool) -> Any:
            return getattr(tvd, class_name)(str(root), train=train, download=request.download)

        sets = []
        for train in (True, False):
            ds = _construct(name, root, functools.partial(make, train))
            sets.append(TensorImageSet(_nchw(ds.data, "nhw"), _labels(ds.targets)))
        return sets[0], sets[1]

    return load


def _split_loader(
    name: str,
    files: _Files,
    make: Callable[[Path, str, bool], Any],
    splits: tuple[str, str],
    in_memory: bool,
) -> Callable[[LoadRequest], Any]:
    """A loader for a torchvision class with a split argument: (train split, test split)."""

    def load(request: LoadRequest) -> tuple[ImageSet, ImageSet]:
        root = files.check(name, request)
        sets: list[ImageSet] = []
        for split in splits:
            ds = _construct(name, root, functools.partial(make, root, split, request.download))
            if in_memory:
                sets.append(TensorImageSet(_nchw(ds.data, "nchw"), _labels(ds.labels)))
            else:
                info = BUILTIN_DATASETS[name]
                sets.append(TorchvisionImageSet(ds, info.size, info.channels))
        return sets[0], sets[1]

    return load


_CIFAR10 = _Files(
    "CIFAR-10",
    lambda r: r / "cifar-10-batches-py",
    (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"),
)
_CIFAR100 = _Files("CIFAR-100", lambda r: r / "cifar-100-python", ("train", "test", "meta"))
_SVHN = _Files("SVHN", lambda r: r, ("train_32x32.mat", "test_32x32.mat"))
_STL10 = _Files(
    "STL-10",
    lambda r: r / "stl10_binary",
    ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"),
)
_MNIST = _Files("MNIST", lambda r: r / "MNIST" / "raw", _MNIST_FILES)

_register(
    BUILTIN_DATASETS["cifar10"],
    _cifar("cifar10", "CIFAR10", _CIFAR10),
    lambda request: _CIFAR10.check("cifar10", request),
    _CIFAR10.paths(),
)
_register(
    BUILTIN_DATASETS["cifar100"],
    _cifar("cifar100", "CIFAR100", _CIFAR100),
    lambda request: _CIFAR100.check("cifar100", request),
    _CIFAR100.paths(),
)
_register(
    BUILTIN_DATASETS["svhn"],
    _split_loader(
        "svhn",
        _SVHN,
        lambda root, split, download: tvd.SVHN(str(root), split=split, download=download),
        ("train", "test"),
        in_memory=True,
    ),
    lambda request: _SVHN.check("svhn", request),
    _SVHN.paths(),
)
_register(
    BUILTIN_DATASETS["stl10"],
    _split_loader(
        "stl10",
        _STL10,
        lambda root, split, download: tvd.STL10(str(root), split=split, download=download),
        ("train", "test"),
        in_memory=True,
    ),
    lambda request: _STL10.check("stl10", request),
    _STL10.paths(),
)
_register(
    BUILTIN_DATASETS["mnist"],
    _mnist_like("mnist", "MNIST", lambda request: _MNIST.check("mnist", request)),
    lambda request: _MNIST.check("mnist", request),
    _MNIST.paths(),
)


# --- Fashion-MNIST, with Debian's package as an offline source ----------------------------------


def _has_idx_files(folder: Path, suffix: str = "") -> bool:
    return all((folder / f"{f}{suffix}").is_file() for f in _MNIST_FILES)


def _gunzip_atomic(src: Path, dest: Path) -> None:
    """Decompress src to dest through a temporary file and os.replace (no half-written dest)."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _unpack_debian_fashion_mnist(debian: Path, root: Path) -> Path:
    """Unpack Debian's .gz files into ROOT/FashionMNIST/raw, else the user cache: the root used."""
    errors: list[str] = []
    for target in (root, user_cache_dir()):
        raw = target / "FashionMNIST" / "raw"
        try:
            raw.mkdir(parents=True, exist_ok=True)
            for f in _MNIST_FILES:
                if not (raw / f).is_file():
                    _gunzip_atomic(debian / f"{f}.gz", raw / f)
        except OSError as err:
            errors.append(f"{raw}: {err}")
            continue
        return target
    raise OSError(f"fashion_mnist: cannot unpack {debian} into {' or '.join(errors)}")


def _fashion_mnist_root(request: LoadRequest) -> Path:
    """The root that holds FashionMNIST/raw, unpacking Debian's copy when needed."""
    root = resolve_root(request)
    if request.download or _has_idx_files(root / "FashionMNIST" / "raw"):
        return root
    debian = FASHION_MNIST_DEBIAN_DIR
    if _has_idx_files(debian, ".gz"):
        return _unpack_debian_fashion_mnist(debian, root)
    if _has_idx_files(user_cache_dir() / "FashionMNIST" / "raw"):
        return user_cache_dir()
    raise _missing_error(
        "fashion_mnist",
        "Fashion-MNIST",
        root,
        [root / "FashionMNIST" / "raw", debian],
        _fix("Fashion-MNIST", True) + " (or install Debian's dataset-fashion-mnist package)",
    )


def _check_fashion_mnist(request: LoadRequest) -> None:
    root = resolve_root(request)
    if request.download or _has_idx_files(root / "FashionMNIST" / "raw"):
        return
    if _has_idx_files(FASHION_MNIST_DEBIAN_DIR, ".gz"):
        return
    _fashion_mnist_root(request)  # the cache, else the error


_register(
    BUILTIN_DATASETS["fashion_mnist"],
    _mnist_like("fashion_mnist", "FashionMNIST", _fashion_mnist_root),
    _check_fashion_mnist,
    ("FashionMNIST/raw",),
)


# --- ImageNet -------------------------------------------------------------------------------

_IMAGENET_DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
_IMAGENET_ARCHIVES = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar"}


def _imagenet_root(root: Path) -> Path:
    """ROOT itself when it holds ImageNet's meta.bin or devkit, else ROOT/imagenet."""
    if (root / "meta.bin").is_file() or (root / _IMAGENET_DEVKIT).is_file():
        return root
    return root / "imagenet"


def _check_imagenet(request: LoadRequest) -> Path:
    root = resolve_root(request)
    folder = _imagenet_root(root)
    missing: list[Path] = []
    if not folder.is_dir():
        missing.append(folder)
    else:
        if not ((folder / "meta.bin").is_file() or (folder / _IMAGENET_DEVKIT).is_file()):
            missing.append(folder / "meta.bin")
        for split, archive in _IMAGENET_ARCHIVES.items():
            if not ((folder / split).is_dir() or (folder / archive).is_file()):
                missing.append(folder / split)
    if missing:
        raise _missing_error(
            "imagenet",
            "ImageNet",
            root,
            missing,
            "set data.root to the folder that holds imagenet/ with meta.bin (or "
            f"{_IMAGENET_DEVKIT}) and train/, val/ (or their .tar archives); torchvision "
            "cannot download ImageNet",
        )
    return folder


def _load_imagenet(request: LoadRequest) -> tuple[ImageSet, ImageSet]:
    folder = _check_imagenet(request)
    info = BUILTIN_DATASETS["imagenet"]

    def make(split: str) -> Any:
        return tvd.ImageNet(str(folder), split=split)

    sets = [
        TorchvisionImageSet(
            _construct("imagenet", folder, functools.partial(make, split)),
            info.size,
            info.channels,
        )
        for split in ("train", "val")
    ]
    return sets[0], sets[1]


_register(
    BUILTIN_DATASETS["imagenet"],
    _load_imagenet,
    _check_imagenet,
    ("imagenet",),
)


# --- file-based transfer targets --------------------------------------------------------------


def _register_files(
    name: str,
    files: _Files,
    make: Callable[[Path, str, bool], Any],
    splits: tuple[str, str] | None,
) -> None:
    """A file-based built-in dataset: (train, test) splits, or splits=None for one set split
    later; its info (classes, 224x224 RGB) is the catalog's."""
    info = BUILTIN_DATASETS[name]
    if splits is not None:
        loader = _split_loader(name, files, make, splits, in_memory=False)
    else:

        def loader(request: LoadRequest) -> tuple[ImageSet, None]:
            root = files.check(name, request)
            ds = _construct(name, root, lambda: make(root, "all", request.download))
            return TorchvisionImageSet(ds, info.size, info.channels), None

    _register(info, loader, lambda request: files.check(name, request), files.paths())


def _concat(*datasets: Dataset) -> Dataset:
    return ConcatDataset(datasets)


_register_files(
    "flowers102",
    _Files("Flowers-102", lambda r: r / "flowers-102", ("jpg", "imagelabels.mat", "setid.mat")),
    lambda root, split, dl: (
        _concat(
            tvd.Flowers102(str(root), split="train", download=dl),
            tvd.Flowers102(str(root), split="val", download=False),
        )
        if split == "trainval"
        else tvd.Flowers102(str(root), split=split, download=dl)
    ),
    ("trainval", "test"),
)
_register_files(
    "dtd",
    _Files(
        "DTD",
        lambda r: r / "dtd" / "dtd",
        ("images", "labels/train1.txt", "labels/test1.txt"),
    ),
    lambda root, split, dl: tvd.DTD(str(root), split=split, partition=1, download=dl),
    ("train", "test"),
)
_register_files(
    "oxford_pets",
    _Files(
        "Oxford-IIIT Pet",
        lambda r: r / "oxford-iiit-pet",
        ("images", "annotations/trainval.txt", "annotations/test.txt"),
    ),
    lambda root, split, dl: tvd.OxfordIIITPet(
        str(root), split=split, target_types="category", download=dl
    ),
    ("trainval", "test"),
)
_register_files(
    "fgvc_aircraft",
    _Files(
        "FGVC-Aircraft",
        lambda r: r / "fgvc-aircraft-2013b",
        (
            "data/images",
            "data/variants.txt",
            "data/images_variant_trainval.txt",
            "data/images_variant_test.txt",
        ),
    ),
    lambda root, split, dl: tvd.FGVCAircraft(
        str(root), split=split, annotation_level="variant", download=dl
    ),
    ("trainval", "test"),
)
_register_files(
    "food101",
    _Files("Food-101", lambda r: r / "food-101", ("images", "meta/train.json", "meta/test.json")),
    lambda root, split, dl: tvd.Food101(str(root), split=split, download=dl),
    ("train", "test"),
)
_register_files(
    "caltech101",
    _Files("Caltech-101", lambda r: r / "caltech101", ("101_ObjectCategories",)),
    lambda root, split, dl: tvd.Caltech101(str(root), target_type="category", download=dl),
    None,
)
_register_files(
    "stanford_cars",
    _Files(
        "Stanford Cars",
        lambda r: r / "stanford_cars",
        (
            "devkit/cars_meta.mat",
            "devkit/cars_train_annos.mat",
            "cars_train",
            "cars_test_annos_withlabels.mat",
            "cars_test",
        ),
        downloadable=False,
    ),
    # torchvision's StanfordCars always refuses download=True (its URL is gone): never pass it.
    lambda root, split, dl: tvd.StanfordCars(str(root), split=split, download=False),
    ("train", "test"),
)
_register_files(
    "sun397",
    _Files("SUN397", lambda r: r / "SUN397", ("ClassName.txt",)),
    lambda root, split, dl: tvd.SUN397(str(root), download=dl),
    None,
)


# --- ImageFolder datasets ---------------------------------------------------------------------


def _folder_path(path: str | Path, request: LoadRequest) -> Path:
    """An absolute path as is; a relative one under the data root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else resolve_root(request) / p


def _register_folder(info: DatasetInfo, path: str | Path, require_split: bool) -> None:
    entries = ("train", "test") if require_split else ()

    def check(request: LoadRequest) -> Path:
        base = _folder_path(path, request)
        missing = (
            [base] if not base.is_dir() else [base / e for e in entries if not (base / e).is_dir()]
        )
        if missing:
            layout = "train/CLASS/* and test/CLASS/*" if require_split else "CLASS/* images"
            where = f"{base}" if Path(path).expanduser().is_absolute() else f"ROOT/{path}"
            raise _missing_error(
                info.name,
                "image",
                resolve_root(request),
                missing,
                f"put {layout} in {where}"
                + ("" if Path(path).expanduser().is_absolute() else " or set data.root")
                + " (it cannot be downloaded)",
            )
        return base

    def folder(directory: Path) -> ImageFolder:
        ds = _construct(info.name, directory, lambda: tvd.ImageFolder(str(directory)))
        if len(ds.classes) != info.num_classes:
            raise ValueError(
                f"{info.name}: {directory} has {len(ds.classes)} class folders but the dataset "
                f"has {info.num_classes} classes: point it at the folder with one subfolder "
                "per class"
            )
        return ds

    def load(request: LoadRequest) -> tuple[ImageSet, ImageSet | None]:
        base = check(request)
        if (base / "train").is_dir() and (base / "test").is_dir():
            train, test = folder(base / "train"), folder(base / "test")
            if train.classes != test.classes:
                raise ValueError(
                    f"{info.name}: {base / 'train'} and {base / 'test'} have different class "
                    "folders: give both the same subfolders"
                )
            return (
                TorchvisionImageSet(train, info.size, info.channels),
                TorchvisionImageSet(test, info.size, info.channels),
            )
        return TorchvisionImageSet(folder(base), info.size, info.channels), None

    relative = not Path(path).expanduser().is_absolute()
    _register(info, load, check, (Path(path).as_posix(),) if relative else ())


def register_image_folder(
    name: str,
    path: str | Path,
    *,
    num_classes: int,
    size: int,
    channels: int = 3,
    mean: tuple[float, ...] = (0.5,) * 3,
    std: tuple[float, ...] = (0.25,) * 3,
    description: str = "",
) -> DatasetInfo:
    """Register a dataset of images in class folders (torchvision's ImageFolder layout).

    path (relative paths are under the data root) holds train/CLASS/* and test/CLASS/*, used
    as the official split, or CLASS/* directly, split by build_dataset (seeded, stratified).
    Images are converted to RGB (L for channels=1) and read through trainables.data.loader's
    views: at 128 px and more, RandomResizedCrop at train time (augment resized_crop_flip) and
    resize 256/224 of size + centre crop at test time; smaller, resized to size + centre crop.
    """
    if channels == 1 and mean == (0.5,) * 3 and std == (0.25,) * 3:
        mean, std = (0.5,), (0.25,)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"{name}: mean and std need {channels} values, got {mean} and {std}")
    info = DatasetInfo(
        name,
        num_classes,
        channels,
        size,
        tuple(mean),
        tuple(std),
        description or f"images in class folders under {path}",
        files=True,
    )
    _register_folder(info, path, require_split=False)
    return info


_register_folder(
    BUILTIN_DATASETS["cinic10"],
    "cinic10",
    require_split=True,
)
_register_folder(
    BUILTIN_DATASETS["cub200"],
    "cub200",
    require_split=True,
)
