"""Datasets as image sets in [0, 1], with class subsets, seeded splits and tensor augmentation.

A dataset is registered by name with a loader that returns its train and test ImageSets (or one
set when the dataset has no official split, which is then split here, seeded and stratified).
Its name and DatasetInfo live in the torch-free trainables.catalog (what a spec is validated
against); this registry attaches the loaders to them.
Small datasets are held in memory as tensors; large ones (ImageNet, the transfer targets stored
as image files) are read through torchvision on demand, by trainables.data.loader's worker
processes for whole passes. A data root that is a URI is copied into the node's cache first
(trainables.data.cache). Pixel values stay in [0, 1] so that eps
is in pixel units; normalisation happens inside the model (PAPER.md section 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from trainables.catalog import DatasetInfo, get_dataset_info, register_dataset_info
from trainables.config import DataConfig, DatasetRef, LoadRequest
from trainables.storage import is_uri

DEFAULT_LOAD = LoadRequest()


class ImageSet(Protocol):
    """Indexed images and labels; get_batch returns float32 N x C x H x W in [0, 1]."""

    targets: np.ndarray

    def __len__(self) -> int: ...

    def get_batch(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor: ...


class TensorImageSet:
    """Images held in memory (uint8 0..255 or float 0..1), N x C x H x W."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def get_batch(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor:
        return to_unit_float(self.images[torch.as_tensor(np.asarray(indices), dtype=torch.long)])


class SubsetImageSet:
    """A subset of another set's items, with relabelled targets."""

    def __init__(self, base: ImageSet, indices: np.ndarray, targets: np.ndarray) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def get_batch(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor:
        return self.base.get_batch(self.indices[np.asarray(indices, dtype=np.int64)])


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float images are returned as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


@dataclass(frozen=True)
class Splits:
    """Train and test sets of one dataset (after its class subset), with the dataset's info."""

    train: ImageSet
    test: ImageSet
    num_classes: int
    info: DatasetInfo

    @property
    def y_train(self) -> torch.Tensor:
        return torch.from_numpy(self.train.targets)

    @property
    def y_test(self) -> torch.Tensor:
        return torch.from_numpy(self.test.targets)

    @property
    def x_train(self) -> torch.Tensor:
        """All train images at once: only for small in-memory datasets."""
        return self.train.get_batch(np.arange(len(self.train)))

    @property
    def x_test(self) -> torch.Tensor:
        """All test images at once: only for small in-memory datasets."""
        return self.test.get_batch(np.arange(len(self.test)))


Loader = Callable[[LoadRequest], tuple[ImageSet, ImageSet | None]]

_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}
# The folders and files under the data root that a dataset reads (what a node copies into its
# cache when the root is a URI); None: not known, so a URI root is refused.
_PATHS: dict[str, tuple[str, ...] | None] = {}


def register_dataset(info: DatasetInfo, loader: Loader, paths: Sequence[str] | None = None) -> None:
    """Add a dataset under info.name: its info to the catalog (what specs are validated against)
    and its loader here. paths: what it reads under the data root, relative to it (folders or
    files), so that a data.root URI can be copied into this node's cache before loading."""
    register_dataset_info(info)
    _REGISTRY[info.name] = (info, loader)
    _PATHS[info.name] = None if paths is None else tuple(paths)


def dataset_paths(name: str) -> tuple[str, ...] | None:
    """What a dataset reads under the data root (None: not registered with its paths)."""
    _load_builtin_registrations()
    return _PATHS.get(name)


def local_request(name: str, request: LoadRequest) -> LoadRequest:
    """The request with a URI data root replaced by this node's cached copy of what `name`
    reads (copied once per node, under a file lock: trainables.data.cache); as is otherwise.

    With download on, what is not under the URI is left to torchvision, which downloads it
    into the cache folder."""
    if request.root is None or not is_uri(request.root):
        return request
    from trainables.data.cache import cache_root_for, materialise

    paths = dataset_paths(name)
    if paths is None:
        raise ValueError(
            f"{name}: data.root is a URI ({request.root}) but the dataset was registered without "
            "the paths it reads: pass paths= to register_dataset, or set data.root to a local "
            "folder"
        )
    try:
        root, _ = materialise(request.root, paths)
    except FileNotFoundError:
        if not request.download:
            raise
        root = cache_root_for(request.root)
        root.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(request, root=str(root))


def dataset_loaders() -> dict[str, tuple[DatasetInfo, Loader]]:
    """Every dataset that has a loader, with the info it was registered with (built-ins too)."""
    _load_builtin_registrations()
    return dict(_REGISTRY)


def get_loader(name: str) -> tuple[DatasetInfo, Loader]:
    """The info and loader of a dataset; an unknown name lists the choices."""
    _load_builtin_registrations()
    if name not in _REGISTRY:
        get_dataset_info(name)  # an unknown name lists the choices
        raise KeyError(
            f"dataset {name!r} is in trainables.catalog but has no loader: register it with "
            "trainables.data.register_dataset(info, loader) in the process that loads it"
        )
    return _REGISTRY[name]


def _load_builtin_registrations() -> None:
    # Imported lazily: the torchvision-backed registrations import torchvision.
    from trainables.data import builtin  # noqa: F401


def select_classes(
    targets: np.ndarray, classes: tuple[int, ...] | None, num_classes: int, name: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Indices of the items in the given classes and their labels relabelled 0..k-1 in order."""
    if classes is None:
        return np.arange(len(targets)), targets, num_classes
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"classes {list(bad)} do not exist in {name} (labels 0..{num_classes - 1}): "
            "pick class indices in that range"
        )
    mapping = np.full(num_classes, -1, dtype=np.int64)
    mapping[list(classes)] = np.arange(len(classes))
    keep = np.flatnonzero(mapping[targets] >= 0)
    return keep, mapping[targets[keep]], len(classes)


def split_stratified(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices: the same seed gives the same split everywhere."""
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def subsample_per_class(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` items per class (seeded), in their original order; all when None."""
    if limit is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(y == c))[:limit] for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def _subset(base: ImageSet, idx: np.ndarray, labels: np.ndarray) -> ImageSet:
    if isinstance(base, TensorImageSet):
        return TensorImageSet(base.images[torch.from_numpy(idx)], labels)
    return SubsetImageSet(base, idx, labels)


def build_dataset(
    ref: DatasetRef,
    data: DataConfig,
    root: str | None = None,
    download: bool = False,
    workers: int | None = None,
) -> Splits:
    """Load a registered dataset, keep its class subset, split it when it has no test split.

    The official test split is used when the dataset has one; otherwise a seeded, stratified
    split with data.test_fraction. data.max_per_class caps the train items of each class.
    A URI root is first copied into this node's cache (local_request); a download runs under
    a node-wide lock, so that two processes never fill one folder at once. workers: the
    data-loading processes asked for file-backed sets (None: by the CPUs held).
    """
    info, loader = get_loader(ref.name)
    request = local_request(ref.name, LoadRequest(root=root, download=download, workers=workers))
    if request.download:
        from trainables.data.cache import exclusive

        lock: contextlib.AbstractContextManager[None] = exclusive(
            f"download:{request.root or ''}:{ref.name}"
        )
    else:
        lock = contextlib.nullcontext()
    with lock:
        train, test = loader(request)
    for images in (train, test):
        if images is not None and hasattr(images, "workers"):
            images.workers = workers
    if test is None:
        idx, labels, k = select_classes(train.targets, ref.classes, info.num_classes, ref.name)
        tr, te = split_stratified(labels, data.test_fraction, data.split_seed)
        train_set, test_set = (
            _subset(train, idx[tr], labels[tr]),
            _subset(train, idx[te], labels[te]),
        )
    else:
        idx, labels, k = select_classes(train.targets, ref.classes, info.num_classes, ref.name)
        train_set = _subset(train, idx, labels) if ref.classes is not None else train
        t_idx, t_labels, _ = select_classes(test.targets, ref.classes, info.num_classes, ref.name)
        test_set = _subset(test, t_idx, t_labels) if ref.classes is not None else test
    if data.max_per_class is not None:
        keep = subsample_per_class(train_set.targets, data.max_per_class, data.split_seed)
        train_set = _subset(train_set, keep, train_set.targets[keep])
    if data.max_test_per_class is not None:
        keep = subsample_per_class(test_set.targets, data.max_test_per_class, data.split_seed)
        test_set = _subset(test_set, keep, test_set.targets[keep])
    return Splits(train=train_set, test=test_set, num_classes=k, info=info)


def iterate_batches(
    images: ImageSet,
    batch_size: int,
    order: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches in the given order (default: sequential), x float32 in [0, 1] on the CPU:
    sliced from memory, or the test view of a file-backed set decoded by the worker processes
    that its LoadRequest and this process's CPUs allow (pinned for a CUDA device), this
    process's torch threads lowered by as many meanwhile."""
    from trainables.data.loader import Batches, cpu_share, plan_workers, requested_workers

    device = torch.device(device)
    workers = plan_workers(requested_workers(images), torch.get_num_threads(), device.type)
    batches = Batches(
        images, batch_size, workers=workers, pin_memory=device.type == "cuda", persistent=False
    )
    try:
        with cpu_share(batches.workers):
            for x, idx in batches(order):
                yield to_unit_float(x), torch.from_numpy(images.targets[idx])
    finally:
        batches.close()


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, crop_padding: int, flip: bool
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, on tensors."""
    n, _, h, w = x.shape
    if crop_padding > 0:
        padded = F.pad(x, (crop_padding,) * 4)
        dy = torch.randint(0, 2 * crop_padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * crop_padding + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x


def adapt_images(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Images in the format a model expects: channel count (grey <-> RGB) and side length."""
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x[:, :3] * weights).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot adapt {x.shape[1]}-channel images to {channels} channels")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.clamp(0.0, 1.0)
    return x


def random_resized_crop_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """ImageNet-style random resized crop per image, back to the input size, on tensors."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    area = h * w
    for i in range(n):
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*scale, generator=generator))
            log_r = torch.empty(1).uniform_(
                math.log(ratio[0]), math.log(ratio[1]), generator=generator
            )
            aspect = math.exp(float(log_r))
            cw = round(math.sqrt(target * aspect))
            ch = round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            ch, cw = h, w
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out[i : i + 1] = F.interpolate(
            crop, size=(h, w), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0.0, 1.0)
    return out
