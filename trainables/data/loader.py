"""File-backed image sets through worker processes: the train and test views, seeded per image.

A dataset held in memory (CIFAR, MNIST, digits) is sliced as a tensor, as before. A dataset read
from image files (ImageNet, ImageFolder sources, the 224-px transfer targets) is decoded by a
torch DataLoader: persistent worker processes, prefetch, pinned memory on CUDA, uint8 batches
(a quarter of the bytes of float ones cross the process boundary and the bus). Why the
DataLoader: its workers, prefetch and pinning are what torchvision's own datasets are built
for, and it ships with torch; a second pipeline library (DALI, FFCV) would need its own file
formats and a GPU.

The views (LARGE_SIZE and up: the ImageNet recipe of the robustness library and Salman et al.):
- test, and every evaluation: shorter side resized to round(size * 256 / 224) (256 for 224 px),
  centre crop size x size; below LARGE_SIZE the shorter side is resized to size itself.
- train with augment resized_crop_flip: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) of the
  decoded image, resized to size x size, and a horizontal flip with probability 1/2. The other
  augmentations (crop_flip, flip) run on the test view's tensors in the trial process, as for
  in-memory sets.

Each image's crop and flip come from its own seed, drawn in the trial process from the trial's
augmentation stream for the epoch: a trial's order and crops are the same for the same seed
whatever the number of workers.

Workers and threads: plan_workers gives the worker count for the CPUs the process holds, and
cpu_share lowers the process's torch threads for as long as the workers live, so that the
threads and the workers together never exceed the CPUs (each worker runs one thread).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainables.catalog import STANDARD_RECIPE_SIZE
from trainables.data import ImageSet, SubsetImageSet
from trainables.lazy import LazyModule

if TYPE_CHECKING:
    from trainables.data.vision import TorchvisionImageSet

TF = LazyModule("torchvision.transforms.v2.functional")

LARGE_SIZE = STANDARD_RECIPE_SIZE
RESIZE_RATIO = 256 / 224
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
# Batches each worker keeps ready ahead of the one being consumed.
PREFETCH = 4
# On a CPU-only node the trial's own threads do the compute: one worker per this many CPUs.
CPUS_PER_WORKER_ON_CPU = 8


def shorter_side(size: int) -> int:
    """The shorter side before the centre crop: 256 for 224 px, the size itself when small."""
    return round(size * RESIZE_RATIO) if size >= LARGE_SIZE else size


def resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random resized crop, from the generator.

    Ten tries at an area fraction in scale and a log-uniform aspect ratio in ratio, as
    torchvision's RandomResizedCrop; after ten misses, the centre crop at the nearest ratio.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*scale, generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_lo, log_hi, generator=generator)))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            top = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
            return top, left, ch, cw
    in_ratio = width / height
    if in_ratio < ratio[0]:
        cw, ch = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = height, round(height * ratio[1])
    else:
        cw, ch = width, height
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def test_view(image: Any, size: int) -> torch.Tensor:
    """A decoded PIL image as uint8 C x size x size: resized on its shorter side, centre crop."""
    if image.size != (size, size):
        image = TF.resize(image, [shorter_side(size)], antialias=True)
        image = TF.center_crop(image, [size, size])
    return TF.pil_to_tensor(image)


def train_view(image: Any, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop of a decoded PIL image, then a flip with probability 1/2."""
    width, height = image.size
    top, left, ch, cw = resized_crop_box(height, width, generator)
    image = TF.resized_crop(image, top, left, ch, cw, [size, size], antialias=True)
    if float(torch.rand(1, generator=generator)) < 0.5:
        image = TF.horizontal_flip(image)
    return TF.pil_to_tensor(image)


def file_backed(images: ImageSet) -> tuple[TorchvisionImageSet, np.ndarray] | None:
    """The file-backed set under a (subset of a) set and the map of indices into it; None for
    an in-memory set."""
    from trainables.data.vision import TorchvisionImageSet

    index = np.arange(len(images))
    while isinstance(images, SubsetImageSet):
        index = images.indices[index]
        images = images.base
    if isinstance(images, TorchvisionImageSet):
        return images, index
    return None


def requested_workers(images: ImageSet) -> int | None:
    """The data.workers a file-backed set was loaded with (None: by the CPUs held)."""
    backed = file_backed(images)
    return backed[0].workers if backed is not None else None


def plan_workers(requested: int | None, cpus: int, device_type: str) -> int:
    """Worker processes for a loader in a process that holds `cpus` CPUs.

    One CPU always stays with the process itself. requested (data.workers) is kept up to that;
    by default a CUDA process, whose compute is on the GPU, gives all the others to decoding,
    and a CPU-only one, whose threads do the compute, one per CPUS_PER_WORKER_ON_CPU CPUs
    (none below that: the process decodes between its steps).
    """
    if cpus <= 1:
        return 0
    if requested is not None:
        return max(0, min(int(requested), cpus - 1))
    if device_type == "cuda":
        return cpus - 1
    return cpus // CPUS_PER_WORKER_ON_CPU


@contextlib.contextmanager
def cpu_share(workers: int) -> Iterator[None]:
    """The process's torch threads lowered by `workers` (at least one) while the block runs."""
    before = torch.get_num_threads()
    if workers > 0:
        torch.set_num_threads(max(1, before - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Views(Dataset):
    """Items (index, seed) -> uint8 image: the train view from the seed, the test view at -1."""

    def __init__(self, images: TorchvisionImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        image = self.images.decode(index)
        if seed < 0:
            return test_view(image, self.images.size)
        return train_view(image, self.images.size, torch.Generator().manual_seed(seed))


class _Plan:
    """The batches of the current pass (lists of (index, seed)): the DataLoader's batch sampler,
    refilled before each pass (its persistent workers stay)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Batches:
    """The batches of one image set: (x, indices), x uint8 (file-backed) or float in [0, 1].

    For a file-backed set, a DataLoader with `workers` persistent processes decodes them; the
    workers start at the first pass and stop at close() (or when the object is collected).
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        *,
        workers: int = 0,
        pin_memory: bool = False,
        train_view: bool = False,
        persistent: bool = True,
    ) -> None:
        self.images, self.batch_size = images, batch_size
        self.train_view = train_view
        backed = file_backed(images)
        self.workers = workers if backed is not None else 0
        self._loader: DataLoader | None = None
        if backed is not None:
            base, self._index = backed
            self._plan = _Plan()
            self._loader = DataLoader(
                _Views(base),
                batch_sampler=self._plan,
                num_workers=self.workers,
                collate_fn=torch.stack,
                pin_memory=pin_memory,
                persistent_workers=persistent and self.workers > 0,
                prefetch_factor=PREFETCH if self.workers > 0 else None,
            )

    @property
    def file_backed(self) -> bool:
        return self._loader is not None

    def __call__(
        self, order: np.ndarray | Sequence[int] | None = None, seeds: np.ndarray | None = None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """One pass in the given order (default sequential); seeds (one per position, the
        train view's) are needed when the train view is on."""
        order = np.arange(len(self.images)) if order is None else np.asarray(order, np.int64)
        chunks = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self._loader is None:
            for idx in chunks:
                yield self.images.get_batch(idx), idx
            return
        if self.train_view and (seeds is None or len(seeds) != len(order)):
            raise ValueError("the train view needs one seed per image of the pass")
        per_item = np.asarray(seeds, np.int64) if self.train_view else np.full(len(order), -1)
        items = list(zip(self._index[order].tolist(), per_item.tolist(), strict=True))
        self._plan.batches = [
            items[s : s + self.batch_size] for s in range(0, len(items), self.batch_size)
        ]
        yield from zip(self._loader, chunks, strict=True)

    def close(self) -> None:
        """Stop the worker processes (a later pass starts new ones)."""
        if self._loader is not None:
            iterator = getattr(self._loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            self._loader._iterator = None


def view_seeds(n: int, generator: torch.Generator) -> np.ndarray:
    """One train-view seed per image of a pass, from the trial's augmentation stream."""
    return torch.randint(0, 2**62, (n,), generator=generator).numpy()
