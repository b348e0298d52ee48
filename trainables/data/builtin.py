"""The built-in dataset registrations: scikit-learn's digits and torchvision's datasets."""

from __future__ import annotations

import numpy as np
import torch

from trainables.data import DatasetInfo, ImageSet, LoadRequest, TensorImageSet, register_dataset


def load_digits(request: LoadRequest) -> tuple[ImageSet, None]:
    """scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels): offline, no split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.from_numpy((bunch.images.astype(np.float32) / 16.0)[:, None, :, :])
    return TensorImageSet(x, bunch.target.astype(np.int64)), None


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
    load_digits,
)

from trainables.data import vision  # noqa: E402, F401  (torchvision-backed registrations)
