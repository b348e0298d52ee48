"""File-backed image sets through worker processes (trainables.data.loader), on JPEG folders
the tests write: the test view is the serial path's and torchvision's, pixel for pixel; the
train view's crops are seeded per image and inside the image; the workers and the trial's
threads never exceed the CPUs it holds; a trial on an ImageFolder source trains and resumes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2

from tests.conftest import ListReporter
from tests.dataset_fixtures import write_jpeg_folder
from trainables.config import (
    ArchRef,
    AttackConfig,
    DataConfig,
    DatasetRef,
    OptimConfig,
    TrainConfig,
)
from trainables.data import Splits, build_dataset
from trainables.data.loader import (
    RRC_RATIO,
    RRC_SCALE,
    Batches,
    file_backed,
    plan_workers,
    resized_crop_box,
    shorter_side,
    view_seeds,
)
from trainables.data.vision import register_image_folder
from trainables.training import run_training

pytestmark = pytest.mark.unit

SIZE = 128  # the smallest side that gets the ImageNet recipe: 146 then a 128 crop


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jpegs") / "folder"
    write_jpeg_folder(folder, ["ant", "bee", "cow"], per_class=6, sides=(150, 260))
    return folder


def load(folder: Path, name: str, workers: int | None = None) -> Splits:
    register_image_folder(name, folder, num_classes=3, size=SIZE)
    return build_dataset(DatasetRef(name), DataConfig(test_fraction=1 / 3), workers=workers)


def file_of(images: object, i: int) -> Path:
    backed = file_backed(images)  # type: ignore[arg-type]
    assert backed is not None
    base, index = backed
    return Path(base.dataset.samples[int(index[i])][0])  # type: ignore[attr-defined]


def one_pass(batches: Batches, **kwargs: object) -> tuple[torch.Tensor, np.ndarray]:
    xs, idxs = zip(*batches(**kwargs), strict=True)  # type: ignore[arg-type]
    return torch.cat(xs), np.concatenate(idxs)


def test_the_test_view_through_workers_is_the_serial_path_and_torchvisions(jpegs: Path) -> None:
    splits = load(jpegs, "test_loader_views")
    test = splits.test
    assert shorter_side(SIZE) == round(SIZE * 256 / 224) == 146
    serial = test.get_batch(np.arange(len(test)))
    # torchvision's own classes on the file: resize the shorter side, centre crop.
    recipe = v2.Compose([v2.Resize(146, antialias=True), v2.CenterCrop(SIZE), v2.PILToTensor()])
    for i in range(len(test)):
        expected = recipe(Image.open(file_of(test, i)).convert("RGB"))
        assert torch.equal((serial[i] * 255).round().to(torch.uint8), expected)
    for workers in (0, 2):
        batches = Batches(test, 4, workers=workers)
        x, idx = one_pass(batches)
        batches.close()
        assert x.dtype == torch.uint8 and x.shape == (len(test), 3, SIZE, SIZE)
        assert np.array_equal(idx, np.arange(len(test)))
        assert torch.equal(x.float().div(255), serial)
        # Another order gives the same images in that order.
        order = np.arange(len(test))[::-1].copy()
        again = Batches(test, 3, workers=workers)
        y, idy = one_pass(again, order=order)
        again.close()
        assert np.array_equal(idy, order) and torch.equal(y, x[order])


def test_train_views_are_seeded_per_image_whatever_the_workers(jpegs: Path) -> None:
    train = load(jpegs, "test_loader_seeded").train
    n = len(train)
    order = np.random.default_rng(3).permutation(n)
    seeds = view_seeds(n, torch.Generator().manual_seed(11))
    views = {}
    for workers in (0, 1, 2):
        batches = Batches(train, 4, workers=workers, train_view=True)
        views[workers] = one_pass(batches, order=order, seeds=seeds)
        # A second pass with the same seeds on the same (persistent) workers: the same crops.
        assert torch.equal(one_pass(batches, order=order, seeds=seeds)[0], views[workers][0])
        batches.close()
    for workers in (1, 2):
        assert torch.equal(views[workers][0], views[0][0])
        assert np.array_equal(views[workers][1], order)
    other = Batches(train, 4, workers=0, train_view=True)
    x_other, _ = one_pass(other, order=order, seeds=seeds + 1)
    assert not torch.equal(x_other, views[0][0])
    # Each image is its own seed's crop of its file: the box, then the flip, from one generator.
    for p in range(n):
        image = Image.open(file_of(train, int(order[p]))).convert("RGB")
        gen = torch.Generator().manual_seed(int(seeds[p]))
        top, left, ch, cw = resized_crop_box(image.height, image.width, gen)
        crop = image.crop((left, top, left + cw, top + ch)).resize(
            (SIZE, SIZE), Image.Resampling.BILINEAR
        )
        expected = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
        if float(torch.rand(1, generator=gen)) < 0.5:
            expected = expected.flip(2)
        # PIL's resize of the crop against torchvision's resized_crop: the same pixels to
        # rounding (torchvision crops and resizes through PIL).
        assert (views[0][0][p].int() - expected.int()).abs().max() <= 1
    with pytest.raises(ValueError, match="one seed per image"):
        next(iter(other(order=order)))


@pytest.mark.parametrize(("height", "width"), [(300, 200), (150, 260), (224, 224)])
def test_random_resized_crops_are_inside_the_image_at_the_recipes_scale_and_ratio(
    height: int, width: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(3000):
        top, left, ch, cw = resized_crop_box(height, width, gen)
        assert top >= 0 and top + ch <= height and left >= 0 and left + cw <= width
        assert ch > 0 and cw > 0
        fraction = ch * cw / (height * width)
        # Rounding the sides to pixels moves the area and the ratio by at most a pixel's worth.
        slack = 2.5 / min(ch, cw)
        assert RRC_SCALE[0] * (1 - slack) <= fraction <= RRC_SCALE[1]
        assert RRC_RATIO[0] * (1 - slack) <= cw / ch <= RRC_RATIO[1] * (1 + slack)
        areas.append(fraction)
    # The draws cover the scale range: down to its floor, up to the largest crop at an
    # allowed ratio (0.77 of a 150 x 260 image, all of a square one).
    assert min(areas) < 0.1 and max(areas) > 0.75


def test_an_image_too_thin_for_any_try_falls_back_to_the_centre_crop_at_the_nearest_ratio() -> None:
    gen = torch.Generator().manual_seed(0)
    assert resized_crop_box(10, 1000, gen) == (0, (1000 - 13) // 2, 10, 13)
    assert resized_crop_box(1000, 10, gen) == ((1000 - 13) // 2, 0, 13, 10)


def test_workers_and_threads_never_exceed_the_cpus_held() -> None:
    for cpus, device, requested in itertools.product(
        range(1, 33), ("cpu", "cuda"), (None, 0, 1, 3, 8, 64)
    ):
        workers = plan_workers(requested, cpus, device)
        assert 0 <= workers <= cpus - 1, (cpus, device, requested)
        if requested is not None:
            assert workers == min(requested, max(cpus - 1, 0))
    # By default a CUDA process decodes with every CPU but its own; a CPU-only one keeps them.
    assert plan_workers(None, 8, "cuda") == 7
    assert plan_workers(None, 2, "cpu") == 0 and plan_workers(None, 16, "cpu") == 2


class CountingReporter(ListReporter):
    """Records, at each report, the trial's torch threads and its live worker processes."""

    def __init__(self, keep_dir: Path) -> None:
        super().__init__(keep_dir)
        self.threads: list[int] = []
        self.children: list[int] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.threads.append(torch.get_num_threads())
        self.children.append(len(psutil.Process().children()))
        super().report(metrics, checkpoint_dir)


def folder_config(name: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        source=DatasetRef(name),
        arch=ArchRef("small_cnn", 0.25),
        norm="l2",
        eps=0.5,
        seed=0,
        optim=OptimConfig(
            epochs=epochs, batch_size=4, optimizer="adam", lr=3e-3, augment="resized_crop_flip"
        ),
        attack=AttackConfig(steps=1),
        eval_attack=AttackConfig(steps=2),
        data=DataConfig(test_fraction=1 / 3),
        deterministic=True,
    )


def test_a_trial_on_an_image_folder_trains_with_workers_and_resumes(
    jpegs: Path, tmp_path: Path
) -> None:
    """Two CPUs held, one data worker asked for: the trial runs on one thread beside it; an
    interrupted run resumed from its first checkpoint ends with the uninterrupted run's weights."""
    splits = load(jpegs, "test_loader_trial", workers=1)
    cfg = folder_config("test_loader_trial", epochs=3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        full = CountingReporter(tmp_path / "full")
        run_training(cfg, splits, full)
        resumed = CountingReporter(tmp_path / "resumed")
        run_training(cfg, splits, resumed, resume_from=full.checkpoints[0])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert after == 2, "the trial gives its threads back when its workers stop"
    assert full.threads == [1, 1, 1] and full.children == [1, 1, 1]
    assert all(t + c <= 2 for t, c in zip(full.threads, full.children, strict=True))
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    assert all(math.isfinite(m["train/loss"]) for m in full.metrics)
    a = load_file(str(full.checkpoints[-1] / "model.safetensors"))
    b = load_file(str(resumed.checkpoints[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.metrics[-1]["test/acc_clean"] == resumed.metrics[-1]["test/acc_clean"]
