"""The built-in dataset loaders: scikit-learn's digits and torchvision's datasets.

Each is attached to its entry in trainables.catalog.BUILTIN_DATASETS (the one copy of its info).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from trainables.catalog import BUILTIN_DATASETS
from trainables.data import ImageSet, LoadRequest, TensorImageSet, register_dataset


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images N x 8 x 8 in 0..16, labels N).

    Read from the CSV that scikit-learn ships (what sklearn.datasets.load_digits parses) without
    importing scikit-learn, which with SciPy costs seconds in every Ray worker that loads them;
    sklearn's own loader where the file is not where this scikit-learn keeps it.
    """
    spec = importlib.util.find_spec("sklearn")
    origin = Path(spec.origin).parent if spec is not None and spec.origin else None
    path = origin / "datasets" / "data" / "digits.csv.gz" if origin is not None else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_digits(request: LoadRequest) -> tuple[ImageSet, None]:
    """scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels): offline, no split."""
    images, labels = digits_arrays()
    x = torch.from_numpy((images.astype(np.float32) / 16.0)[:, None, :, :])
    return TensorImageSet(x, labels.astype(np.int64)), None


register_dataset(BUILTIN_DATASETS["digits"], load_digits, paths=())  # bundled: nothing to copy

from trainables.data import vision  # noqa: E402, F401  (torchvision-backed registrations)
