"""Datasets: class subsets, seeded splits, subsampling, tensor augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.catalog import get_dataset_info
from trainables.config import DataConfig, DatasetRef
from trainables.data import build_dataset, split_stratified

pytestmark = pytest.mark.unit


def test_class_subset_is_relabelled_in_order() -> None:
    splits = build_dataset(DatasetRef("digits", (5, 6, 7, 8, 9)), DataConfig())
    assert splits.num_classes == 5
    assert set(splits.y_train.tolist()) == {0, 1, 2, 3, 4}
    full = build_dataset(DatasetRef("digits"), DataConfig(test_fraction=0.3))
    # The images labelled 0 in the subset are exactly the images of digit 5.
    fives = full.x_train[full.y_train == 5].flatten(1)
    sub0 = splits.x_train[splits.y_train == 0].flatten(1)
    assert {tuple(r.tolist()) for r in sub0} <= {
        tuple(r.tolist()) for r in torch.cat([fives, full.x_test[full.y_test == 5].flatten(1)])
    }


def test_pixels_are_in_unit_range_and_shaped_nchw() -> None:
    splits = build_dataset(DatasetRef("digits", (0, 1)), DataConfig())
    assert splits.x_train.dtype == torch.float32 and splits.x_train.shape[1:] == (1, 8, 8)
    assert splits.x_train.min() >= 0 and splits.x_train.max() <= 1


def test_split_is_seeded_stratified_and_disjoint() -> None:
    y = np.repeat(np.arange(4), 50)
    a_train, a_test = split_stratified(y, 0.3, seed=3)
    b_train, b_test = split_stratified(y, 0.3, seed=3)
    c_train, _ = split_stratified(y, 0.3, seed=4)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)
    assert not np.array_equal(a_train, c_train)
    assert not set(a_train) & set(a_test) and len(a_train) + len(a_test) == len(y)
    assert np.bincount(y[a_test]).tolist() == [15, 15, 15, 15]


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(KeyError, match=r"choose one of .*digits"):
        get_dataset_info("cifar1000")


def test_crop_flip_gives_shifted_or_mirrored_copies_of_each_image() -> None:
    from trainables.data import augment_batch

    x = torch.rand(16, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0), crop_padding=2, flip=True)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        found = any(
            torch.equal(out[i], cand[:, dy : dy + 8, dx : dx + 8])
            for cand in (padded[i], padded[i].flip(2))
            for dy in range(5)
            for dx in range(5)
        )
        assert found, f"image {i} is not a crop of its padded original"


def test_flip_only_mirrors_about_half_of_the_batch() -> None:
    from trainables.data import augment_batch

    x = torch.rand(200, 1, 4, 4)
    out = augment_batch(x, torch.Generator().manual_seed(1), crop_padding=0, flip=True)
    same = [torch.equal(out[i], x[i]) for i in range(200)]
    mirrored = [torch.equal(out[i], x[i].flip(2)) for i in range(200)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 60 < sum(mirrored) < 140


def test_resized_crop_keeps_shape_and_range() -> None:
    from trainables.data import random_resized_crop_batch

    x = torch.rand(4, 3, 16, 16)
    out = random_resized_crop_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_adapt_images_converts_channels_and_size() -> None:
    from trainables.data import adapt_images

    grey = torch.rand(2, 1, 8, 8)
    rgb = adapt_images(grey, 3, 16)
    assert rgb.shape == (2, 3, 16, 16)
    assert torch.equal(rgb[:, 0], rgb[:, 1])
    back = adapt_images(torch.full((1, 3, 4, 4), 0.5), 1, 4)
    assert back.shape == (1, 1, 4, 4) and torch.allclose(back, torch.full_like(back, 0.5))


def test_max_per_class_keeps_a_seeded_balanced_subsample() -> None:
    cfg = DataConfig(max_per_class=10, max_test_per_class=5)
    a = build_dataset(DatasetRef("digits", (0, 1, 2)), cfg)
    b = build_dataset(DatasetRef("digits", (0, 1, 2)), cfg)
    assert np.bincount(a.train.targets).tolist() == [10, 10, 10]
    assert np.bincount(a.test.targets).tolist() == [5, 5, 5]
    assert torch.equal(a.x_train, b.x_train)


def test_digits_read_without_sklearn_are_sklearns_digits() -> None:
    from sklearn.datasets import load_digits

    from trainables.data.builtin import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
