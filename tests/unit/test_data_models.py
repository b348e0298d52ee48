"""Datasets (class subsets, seeded split) and the model registry (contract: forward, backward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.config import ArchRef, DataConfig, DatasetRef
from trainables.data import build_dataset, get_dataset_info, split_stratified
from trainables.models import ModelInput, build_model, list_models

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
    with pytest.raises(KeyError, match="choose one of digits"):
        get_dataset_info("cifar1000")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_every_model_runs_forward_and_backward(name: str, width: float) -> None:
    inputs = ModelInput(channels=1, size=8, mean=(0.3,), std=(0.4,))
    model = build_model(ArchRef(name, width), inputs, num_classes=5)
    x = torch.rand(4, 1, 8, 8)
    logits = model(x)
    assert logits.shape == (4, 5)
    assert model.features(x).shape == (4, model.feature_dim)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


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


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(KeyError, match="resnet18, small_cnn"):
        build_model(ArchRef("vgg"), ModelInput(1, 8, (0.0,), (1.0,)), 2)
