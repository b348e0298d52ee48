"""Tiny fake datasets written in the exact on-disk formats torchvision's dataset classes read.

Each writer puts a few images under a root folder, laid out as the real dataset is, and returns
what it wrote (uint8 images N x C x H x W and int64 labels, per split) so tests can compare
pixels. torchvision checks the md5 sums of some real files (CIFAR batches, SVHN .mat, STL-10,
Flowers-102): fake files cannot pass them, so tests wrap loading in skip_integrity_checks(),
which patches check_integrity / check_md5 in the dataset's torchvision module the way
torchvision's own test-suite (test/datasets_utils.py) does. Production code keeps the checks.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import scipy.io
import torch
from PIL import Image

Arrays = dict[str, np.ndarray]


@contextlib.contextmanager
def skip_integrity_checks(*modules: str) -> Iterator[None]:
    """Patch the md5 checks of torchvision.datasets.<module> (e.g. "cifar", "svhn") to pass."""
    with contextlib.ExitStack() as stack:
        for name in modules:
            module = importlib.import_module(f"torchvision.datasets.{name}")
            for func in ("check_integrity", "check_md5"):
                if hasattr(module, func):
                    stack.enter_context(mock.patch.object(module, func, return_value=True))
        yield


def random_images(n: int, channels: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 N x C x H x W noise (every value 0..255 possible)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, channels, height, width), dtype=np.uint8)


def balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """n labels cycling through the classes, shuffled (int64)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def save_image(path: Path, image: np.ndarray) -> None:
    """Write a uint8 C x H x W array as an image file (format from the suffix; C = 1 or 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hwc = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(hwc)).save(path)


# --- CIFAR ------------------------------------------------------------------------------------


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_entry(images: np.ndarray, labels: np.ndarray, label_key: str) -> dict[str, object]:
    # The real batches hold 'data' as N x 3072 uint8 rows (R plane, G plane, B plane, each 32x32).
    return {"data": images.reshape(len(images), -1), label_key: labels.tolist()}


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 4, seed: int = 0) -> Arrays:
    """ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    folder = root / "cifar-10-batches-py"
    train_x = random_images(5 * per_batch, 3, 32, 32, seed)
    train_y = balanced_labels(5 * per_batch, 10, seed)
    test_x = random_images(n_test, 3, 32, 32, seed + 1)
    test_y = balanced_labels(n_test, 10, seed + 1)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        entry = _cifar_entry(train_x[part], train_y[part], "labels")
        _pickle(folder / f"data_batch_{b + 1}", {**entry, "batch_label": f"training batch {b + 1}"})
    _pickle(folder / "test_batch", _cifar_entry(test_x, test_y, "labels"))
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> Arrays:
    """ROOT/cifar-100-python/{train, test, meta} with fine and coarse labels."""
    folder = root / "cifar-100-python"
    out: Arrays = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x = random_images(n, 3, 32, 32, s)
        y = (balanced_labels(n, 10, s) * 10 + 7).astype(np.int64)  # labels spread over 0..99
        entry = _cifar_entry(x, y, "fine_labels")
        entry["coarse_labels"] = (y // 5).tolist()
        _pickle(folder / split, entry)
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        },
    )
    return out


# --- SVHN and STL-10 --------------------------------------------------------------------------


def write_svhn(root: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> Arrays:
    """ROOT/{train,test}_32x32.mat: X is H x W x C x N uint8, y is N x 1 with 10 for digit 0."""
    out: Arrays = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x = random_images(n, 3, 32, 32, s)
        y = balanced_labels(n, 10, s)
        y[0] = 0  # at least one zero, stored as 10
        mat_y = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": mat_y})
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def write_stl10(root: Path, n_train: int = 4, n_test: int = 3, seed: int = 0) -> Arrays:
    """ROOT/stl10_binary/*.bin: images stored column-major (C x W x H), labels 1..10 as uint8."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out: Arrays = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x = random_images(n, 3, 96, 96, s)
        y = balanced_labels(n, 10, s)
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(folder / f"{split}_X.bin")
        (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    random_images(2, 3, 96, 96, seed + 2).transpose(0, 1, 3, 2).tofile(folder / "unlabeled_X.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return out


# --- MNIST-style IDX files --------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array in the IDX format: magic 0x0000 08 ndim, big-endian int32 dims, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


_IDX_NAMES = {
    ("train", "x"): "train-images-idx3-ubyte",
    ("train", "y"): "train-labels-idx1-ubyte",
    ("test", "x"): "t10k-images-idx3-ubyte",
    ("test", "y"): "t10k-labels-idx1-ubyte",
}


def _mnist_arrays(n_train: int, n_test: int, seed: int) -> Arrays:
    out: Arrays = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        out[f"{split}_x"] = random_images(n, 1, 28, 28, s)
        out[f"{split}_y"] = balanced_labels(n, 10, s)
    return out


def write_idx_folder(
    folder: Path, n_train: int = 6, n_test: int = 4, seed: int = 0, gz: bool = False
) -> Arrays:
    """The four MNIST IDX files in folder (uncompressed, or .gz as Debian ships them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = _mnist_arrays(n_train, n_test, seed)
    for (split, kind), name in _IDX_NAMES.items():
        array = out[f"{split}_{kind}"]
        data = idx_bytes(array[:, 0] if kind == "x" else array)
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return out


def write_mnist(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> Arrays:
    """ROOT/MNIST/raw/ with the four uncompressed IDX files."""
    return write_idx_folder(root / "MNIST" / "raw", n_train, n_test, seed)


def write_fashion_mnist(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> Arrays:
    """ROOT/FashionMNIST/raw/ with the four uncompressed IDX files."""
    return write_idx_folder(root / "FashionMNIST" / "raw", n_train, n_test, seed)


def write_debian_fashion_mnist(
    folder: Path, n_train: int = 6, n_test: int = 4, seed: int = 0
) -> Arrays:
    """A folder like Debian's /usr/share/datasets/fashion-mnist: the four IDX files, gzipped."""
    return write_idx_folder(folder, n_train, n_test, seed, gz=True)


# --- image folders ----------------------------------------------------------------------------


def write_image_folder(
    folder: Path,
    classes: list[str],
    per_class: int,
    size: tuple[int, int] = (32, 32),
    suffix: str = ".png",
    seed: int = 0,
) -> Arrays:
    """folder/CLASS/img_K.suffix (ImageFolder's layout); x/y in ImageFolder's sorted order."""
    h, w = size
    images: list[np.ndarray] = []
    labels: list[int] = []
    for c, cls in enumerate(sorted(classes)):
        xs = random_images(per_class, 3, h, w, seed + 101 * c)
        for k in range(per_class):
            save_image(folder / cls / f"img_{k}{suffix}", xs[k])
        images.extend(xs)
        labels.extend([c] * per_class)
    return {"x": np.stack(images), "y": np.asarray(labels, dtype=np.int64)}


def write_jpeg_folder(
    folder: Path, classes: list[str], per_class: int, sides: tuple[int, int], seed: int = 0
) -> list[Path]:
    """folder/CLASS/img_K.JPEG of ImageNet's kind: RGB JPEGs (quality 90) of varied sizes and
    aspect ratios, each side drawn from `sides`; smooth colour fields plus noise, so that a
    resize and a crop have structure to keep. The paths in ImageFolder's sorted order."""
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for cls in sorted(classes):
        for k in range(per_class):
            h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
            yy, xx = np.mgrid[0:h, 0:w]
            phase = rng.uniform(0, 2 * np.pi, size=3)
            field = np.stack(
                [np.sin(xx / (9 + 5 * c) + yy / (13 + 3 * c) + phase[c]) for c in range(3)], -1
            )
            pixels = 127 + 90 * field + rng.normal(0, 12, size=(h, w, 3))
            path = folder / cls / f"img_{k}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(path)
    return paths


def write_imagenet(
    root: Path, wnids: list[str], n_train: int = 2, n_val: int = 1, size: int = 40
) -> Arrays:
    """ROOT/{meta.bin, train/WNID/*.JPEG, val/WNID/*.JPEG}: what torchvision's ImageNet leaves
    after parsing the archives (meta.bin = torch.save((wnid_to_classes, val_wnids)))."""
    root.mkdir(parents=True, exist_ok=True)
    wnid_to_classes = {w: (f"class {i}", f"thing {i}") for i, w in enumerate(wnids)}
    val_wnids: list[str] = []
    out: Arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        labels = []
        for c, wnid in enumerate(sorted(wnids)):
            for k in range(n):
                name = f"{wnid}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{c:05d}{k}.JPEG"
                img = random_images(1, 3, size, size + 8, 7 * c + k)[0]
                save_image(root / split / wnid / name, img)
                labels.append(c)
                if split == "val":
                    val_wnids.append(wnid)
        out[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    torch.save((wnid_to_classes, val_wnids), root / "meta.bin")
    return out


# --- transfer targets (file-based torchvision datasets) ----------------------------------------


def write_caltech101(
    root: Path, categories: list[str], per_class: int = 4, grey: bool = True
) -> Arrays:
    """ROOT/caltech101/101_ObjectCategories/CAT/image_0001.jpg.. (+ BACKGROUND_Google); the
    first image of each category is greyscale when grey (as some real ones are)."""
    base = root / "caltech101" / "101_ObjectCategories"
    save_image(base / "BACKGROUND_Google" / "image_0001.jpg", random_images(1, 3, 20, 20, 99)[0])
    labels = []
    for c, cat in enumerate(sorted(categories)):
        for k in range(per_class):
            channels = 1 if grey and k == 0 else 3
            img = random_images(1, channels, 30, 40, 13 * c + k)[0]
            save_image(base / cat / f"image_{k + 1:04d}.jpg", img)
            labels.append(c)
    return {"y": np.asarray(labels, dtype=np.int64)}


def write_dtd(root: Path, classes: list[str], per_split: int = 2) -> Arrays:
    """ROOT/dtd/dtd/{images/CLASS/CLASS_000K.jpg, labels/{train,val,test}1.txt}."""
    data = root / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True, exist_ok=True)
    out: Arrays = {}
    for s, split in enumerate(("train", "val", "test")):
        lines, labels = [], []
        for c, cls in enumerate(sorted(classes)):
            for k in range(per_split):
                name = f"{cls}_{s}{k:03d}.jpg"
                save_image(data / "images" / cls / name, random_images(1, 3, 24, 30, c + k)[0])
                lines.append(f"{cls}/{name}")
                labels.append(c)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
        out[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    return out


def write_flowers102(root: Path, labels: list[int], setid: dict[str, list[int]]) -> None:
    """ROOT/flowers-102/{jpg/image_0000K.jpg, imagelabels.mat, setid.mat}: labels[i] (1-based)
    is image i+1's class; setid maps trnid/valid/tstid to image ids (2+ each)."""
    base = root / "flowers-102"
    for i in range(len(labels)):
        save_image(base / "jpg" / f"image_{i + 1:05d}.jpg", random_images(1, 3, 30, 20, i)[0])
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.asarray([labels], dtype=np.uint8)})
    scipy.io.savemat(
        base / "setid.mat", {k: np.asarray([v], dtype=np.uint16) for k, v in setid.items()}
    )


def write_oxford_pets(root: Path, breeds: list[str], per_split: int = 2) -> Arrays:
    """ROOT/oxford-iiit-pet/{images/Breed_K.jpg, annotations/{trainval,test}.txt}."""
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    out: Arrays = {}
    for s, split in enumerate(("trainval", "test")):
        lines, labels = [], []
        for c, breed in enumerate(breeds):
            for k in range(per_split):
                image_id = f"{breed}_{s * 100 + k + 1}"
                save_image(base / "images" / f"{image_id}.jpg", random_images(1, 3, 25, 35, k)[0])
                lines.append(f"{image_id} {c + 1} {1 + c % 2} 1")
                labels.append(c)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        out[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    return out


def write_fgvc_aircraft(root: Path, variants: list[str], per_split: int = 2) -> Arrays:
    """ROOT/fgvc-aircraft-2013b/data/{images/ID.jpg, variants.txt, images_variant_SPLIT.txt}."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    out: Arrays = {}
    n = 0
    for split in ("trainval", "test"):
        lines, labels = [], []
        for c, variant in enumerate(variants):
            for _ in range(per_split):
                n += 1
                image_id = f"{1000000 + n:07d}"
                save_image(data / "images" / f"{image_id}.jpg", random_images(1, 3, 30, 50, n)[0])
                lines.append(f"{image_id} {variant}")
                labels.append(c)
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        out[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    return out


def write_food101(root: Path, dishes: list[str], per_split: int = 2) -> Arrays:
    """ROOT/food-101/{images/DISH/ID.jpg, meta/{train,test}.json}."""
    base = root / "food-101"
    (base / "meta").mkdir(parents=True, exist_ok=True)
    out: Arrays = {}
    for s, split in enumerate(("train", "test")):
        meta: dict[str, list[str]] = {}
        labels = []
        for c, dish in enumerate(sorted(dishes)):
            meta[dish] = []
            for k in range(per_split):
                rel = f"{dish}/{s}{k:05d}"
                save_image(base / "images" / f"{rel}.jpg", random_images(1, 3, 28, 28, k)[0])
                meta[dish].append(rel)
                labels.append(c)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
        out[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    return out


def write_stanford_cars(root: Path, num_classes: int = 196, per_split: int = 2) -> Arrays:
    """ROOT/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/,
    cars_test_annos_withlabels.mat, cars_test/}; images only for classes 1..3 (1-based)."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.asarray([f"car model {i}" for i in range(num_classes)], dtype=object)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    out: Arrays = {}
    splits = (
        ("train", base / "cars_train", base / "devkit" / "cars_train_annos.mat"),
        ("test", base / "cars_test", base / "cars_test_annos_withlabels.mat"),
    )
    for split, folder, mat in splits:
        records, labels = [], []
        for c in range(3):
            for k in range(per_split):
                fname = f"{c:02d}{k:03d}.jpg"
                save_image(folder / fname, random_images(1, 3, 30, 45, c + k)[0])
                records.append((fname, c + 1))
                labels.append(c)
        annotations = np.array(records, dtype=[("fname", "O"), ("class", "O")])
        scipy.io.savemat(mat, {"annotations": annotations})
        out[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    return out


def write_sun397(root: Path, scenes: list[str], per_class: int = 3) -> Arrays:
    """ROOT/SUN397/{ClassName.txt, L/SCENE/sun_*.jpg} (scenes like "abbey", "bus_interior")."""
    base = root / "SUN397"
    base.mkdir(parents=True, exist_ok=True)
    (base / "ClassName.txt").write_text("".join(f"/{s[0]}/{s}\n" for s in scenes))
    labels = []
    for c, scene in enumerate(scenes):
        for k in range(per_class):
            img = random_images(1, 3, 32, 24, c + k)[0]
            save_image(base / scene[0] / scene / f"sun_{c}{k:04d}.jpg", img)
            labels.append(c)
    return {"y": np.asarray(labels, dtype=np.int64)}
