"""Datasets as in-memory image tensors in [0, 1], with class subsets and a seeded split.

A dataset is registered by name with a loader returning all its images and labels; the
registry, not the caller, knows how to load it. Pixel values stay in [0, 1] so that eps is in
pixel units; normalisation happens inside the model (PAPER.md section 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainables.config import DataConfig, DatasetRef


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


@dataclass(frozen=True)
class Splits:
    """Train and test tensors of one dataset (x: float32 N x C x H x W in [0, 1], y: int64)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    info: DatasetInfo


Loader = Callable[[str | None], tuple[np.ndarray, np.ndarray]]

_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}


def register_dataset(info: DatasetInfo, loader: Loader) -> None:
    """Add a dataset to the registry under info.name."""
    _REGISTRY[info.name] = (info, loader)


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry of a dataset; an unknown name lists the choices."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}: choose one of {', '.join(list_datasets())}")
    return _REGISTRY[name][0]


def _load_digits(root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels), no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64)


register_dataset(
    DatasetInfo(
        name="digits",
        num_classes=10,
        channels=1,
        size=8,
        mean=(0.305,),
        std=(0.389,),
        description="scikit-learn's bundled 8x8 handwritten digits (offline)",
    ),
    _load_digits,
)


def select_classes(
    x: np.ndarray, y: np.ndarray, classes: tuple[int, ...] | None, num_classes: int, name: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep only the given classes and relabel them 0..k-1 in the given order."""
    if classes is None:
        return x, y, num_classes
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"classes {list(bad)} do not exist in {name} (labels 0..{num_classes - 1}): "
            "pick class indices in that range"
        )
    mapping = np.full(num_classes, -1, dtype=np.int64)
    mapping[list(classes)] = np.arange(len(classes))
    keep = mapping[y] >= 0
    return x[keep], mapping[y[keep]], len(classes)


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
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def build_dataset(ref: DatasetRef, data: DataConfig, root: str | None = None) -> Splits:
    """Load a registered dataset, keep its class subset and split it (seeded, stratified)."""
    info = get_dataset_info(ref.name)
    loader = _REGISTRY[ref.name][1]
    x, y = loader(root)
    x, y, k = select_classes(x, y, ref.classes, info.num_classes, ref.name)
    train_idx, test_idx = split_stratified(y, data.test_fraction, data.split_seed)
    return Splits(
        x_train=torch.from_numpy(np.ascontiguousarray(x[train_idx])),
        y_train=torch.from_numpy(y[train_idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(x[test_idx])),
        y_test=torch.from_numpy(y[test_idx]),
        num_classes=k,
        info=info,
    )
