"""torchvision-backed datasets, read by torchvision's own classes from format-exact tiny fakes."""

from __future__ import annotations

import gzip
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.dataset_fixtures import (
    skip_integrity_checks,
    write_caltech101,
    write_cifar10,
    write_cifar100,
    write_debian_fashion_mnist,
    write_dtd,
    write_fashion_mnist,
    write_fgvc_aircraft,
    write_flowers102,
    write_food101,
    write_image_folder,
    write_imagenet,
    write_mnist,
    write_oxford_pets,
    write_stanford_cars,
    write_stl10,
    write_sun397,
    write_svhn,
)
from trainables.catalog import DataMissingError, get_dataset_info, list_datasets
from trainables.config import DataConfig, DatasetRef
from trainables.data import LoadRequest, Splits, build_dataset, vision
from trainables.data.vision import (
    TorchvisionImageSet,
    check_available,
    register_image_folder,
    resolve_root,
)

pytestmark = pytest.mark.unit

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network: any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep unpacked Fashion-MNIST copies away from the real ~/.cache and the real data root."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("ATSWEEP_DATA_ROOT", raising=False)


def build(name: str, root: Path, classes: tuple[int, ...] | None = None, **data: object) -> Splits:
    return build_dataset(DatasetRef(name, classes), DataConfig(**data), root=str(root))  # type: ignore[arg-type]


def unit(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float() / 255.0


def assert_images(x: torch.Tensor, n: int, channels: int, size: int) -> None:
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (n, channels, size, size)
    assert x.min() >= 0.0 and x.max() <= 1.0


# --- in-memory datasets -----------------------------------------------------------------------


def test_cifar10_reads_the_exact_pixels_and_labels(tmp_path: Path) -> None:
    fake = write_cifar10(tmp_path, per_batch=2, n_test=4)
    with skip_integrity_checks("cifar"):
        splits = build("cifar10", tmp_path)
    assert_images(splits.x_train, 10, 3, 32)
    assert_images(splits.x_test, 4, 3, 32)
    assert torch.equal(splits.x_train, unit(fake["train_x"]))
    assert torch.equal(splits.x_test[2], unit(fake["test_x"][2]))
    assert splits.y_train.tolist() == fake["train_y"].tolist()
    assert splits.y_test.tolist() == fake["test_y"].tolist()
    assert splits.num_classes == 10 and splits.info.size == 32


def test_cifar10_class_subset_is_relabelled(tmp_path: Path) -> None:
    fake = write_cifar10(tmp_path, per_batch=4, n_test=10)
    with skip_integrity_checks("cifar"):
        splits = build("cifar10", tmp_path, classes=(7, 2))
    keep = np.flatnonzero(np.isin(fake["train_y"], [7, 2]))
    assert splits.num_classes == 2
    assert splits.y_train.tolist() == [0 if y == 7 else 1 for y in fake["train_y"][keep]]
    assert torch.equal(splits.x_train, unit(fake["train_x"][keep]))
    assert sorted(splits.y_test.tolist()) == [0, 1]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    fake = write_cifar100(tmp_path, n_train=6, n_test=4)
    with skip_integrity_checks("cifar"):
        splits = build("cifar100", tmp_path)
    assert_images(splits.x_train, 6, 3, 32)
    assert splits.y_train.tolist() == fake["train_y"].tolist()
    assert torch.equal(splits.x_test, unit(fake["test_x"]))
    assert splits.num_classes == 100


def test_svhn_maps_label_10_to_digit_0(tmp_path: Path) -> None:
    fake = write_svhn(tmp_path, n_train=5, n_test=3)
    with skip_integrity_checks("svhn"):
        splits = build("svhn", tmp_path)
    assert_images(splits.x_train, 5, 3, 32)
    assert_images(splits.x_test, 3, 3, 32)
    assert splits.y_train.tolist() == fake["train_y"].tolist() and 0 in splits.y_train.tolist()
    assert torch.equal(splits.x_train, unit(fake["train_x"]))


def test_stl10_reads_column_major_binaries(tmp_path: Path) -> None:
    fake = write_stl10(tmp_path, n_train=4, n_test=3)
    with skip_integrity_checks("stl10"):
        splits = build("stl10", tmp_path)
    assert_images(splits.x_train, 4, 3, 96)
    assert torch.equal(splits.x_test, unit(fake["test_x"]))
    assert splits.y_train.tolist() == fake["train_y"].tolist()


def test_mnist_reads_idx_files_exactly(tmp_path: Path) -> None:
    fake = write_mnist(tmp_path, n_train=6, n_test=4)
    splits = build("mnist", tmp_path)  # torchvision only checks that MNIST's files exist
    assert_images(splits.x_train, 6, 1, 28)
    assert_images(splits.x_test, 4, 1, 28)
    assert torch.equal(splits.x_train[3], unit(fake["train_x"][3]))
    assert torch.equal(splits.x_test, unit(fake["test_x"]))
    assert splits.y_test.tolist() == fake["test_y"].tolist()


def test_fashion_mnist_prefers_the_torchvision_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = write_fashion_mnist(tmp_path / "data", n_train=6, n_test=4, seed=3)
    write_debian_fashion_mnist(tmp_path / "debian", n_train=8, n_test=2, seed=5)
    monkeypatch.setattr(vision, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "debian")
    splits = build("fashion_mnist", tmp_path / "data")
    assert len(splits.train) == 6 and torch.equal(splits.x_test, unit(fake["test_x"]))


def test_fashion_mnist_offline_from_debian_gz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = write_debian_fashion_mnist(tmp_path / "debian", n_train=8, n_test=4)
    monkeypatch.setattr(vision, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "debian")
    root = tmp_path / "data"  # does not exist yet
    check_available("fashion_mnist", LoadRequest(root=str(root)))
    splits = build("fashion_mnist", root, classes=(3, 1, 4, 5, 9, 2, 6, 0, 8, 7))
    assert_images(splits.x_train, 8, 1, 28)
    assert len(splits.test) == 4
    assert torch.equal(splits.x_train, unit(fake["train_x"]))
    order = [3, 1, 4, 5, 9, 2, 6, 0, 8, 7]
    assert splits.y_train.tolist() == [order.index(y) for y in fake["train_y"]]
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        p.name.removesuffix(".gz") for p in (tmp_path / "debian").iterdir()
    )  # unpacked in place, no temporary files left behind
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == gzip.decompress(
        (tmp_path / "debian" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    )


def test_fashion_mnist_unpacks_into_the_user_cache_when_root_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_debian_fashion_mnist(tmp_path / "debian", n_train=6, n_test=4)
    monkeypatch.setattr(vision, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "debian")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # nothing can be created below a file, even as root
    splits = build("fashion_mnist", blocker / "data")
    assert len(splits.train) == 6 and len(splits.test) == 4
    cached = tmp_path / "xdg-cache" / "atsweep" / "FashionMNIST" / "raw"
    assert (cached / "train-images-idx3-ubyte").is_file()


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    splits = build("fashion_mnist", tmp_path / "data")
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert np.bincount(splits.train.targets).tolist() == [6000] * 10
    x = splits.train.get_batch(np.arange(64))
    assert_images(x, 64, 1, 28)
    assert x.max() == 1.0 and x.min() == 0.0
    shutil.rmtree(tmp_path / "data")  # 55 MB unpacked: not kept among pytest's temp folders


# --- file-based datasets ----------------------------------------------------------------------


def test_imagenet_reads_meta_bin_and_split_folders(tmp_path: Path) -> None:
    wnids = ["n01440764", "n01443537", "n01484850"]
    fake = write_imagenet(tmp_path / "imagenet", wnids, n_train=2, n_val=1, size=40)
    check_available("imagenet", LoadRequest(root=str(tmp_path)))
    splits = build("imagenet", tmp_path)
    assert isinstance(splits.train, TorchvisionImageSet)
    assert splits.y_train.tolist() == fake["train_y"].tolist()
    assert splits.y_test.tolist() == fake["val_y"].tolist()
    assert_images(splits.test.get_batch([0, 2]), 2, 3, 224)
    sub = build("imagenet", tmp_path, classes=(2, 0))
    assert sub.y_train.tolist() == [1, 1, 0, 0] and sub.num_classes == 2


def test_imagenet_root_may_be_the_imagenet_folder_itself(tmp_path: Path) -> None:
    write_imagenet(tmp_path, ["n01440764", "n01443537"], n_train=1, n_val=1, size=16)
    splits = build("imagenet", tmp_path)
    assert len(splits.train) == 2 and len(splits.test) == 2


def test_labels_are_read_without_decoding_images(tmp_path: Path) -> None:
    write_imagenet(tmp_path / "imagenet", ["n01", "n02"], n_train=2, n_val=1, size=16)
    for jpeg in (tmp_path / "imagenet").rglob("*.JPEG"):
        jpeg.write_bytes(b"not an image")  # decoding now fails; listing labels must not
    splits = build("imagenet", tmp_path, classes=(1,))
    assert splits.y_train.tolist() == [0, 0]
    with pytest.raises(Exception, match="cannot identify image file"):
        splits.train.get_batch([0])


def test_caltech101_has_no_split_so_build_dataset_splits_it(tmp_path: Path) -> None:
    fake = write_caltech101(tmp_path, ["accordion", "airplanes", "anchor"], per_class=10)
    splits = build("caltech101", tmp_path, test_fraction=0.3, split_seed=1)
    assert len(splits.train) == 21 and len(splits.test) == 9
    assert np.bincount(splits.test.targets).tolist() == [3, 3, 3]
    all_targets = np.sort(np.concatenate([splits.train.targets, splits.test.targets]))
    assert all_targets.tolist() == sorted(fake["y"].tolist())
    again = build("caltech101", tmp_path, test_fraction=0.3, split_seed=1)
    assert np.array_equal(splits.test.targets, again.test.targets)
    # The greyscale images (the first of each category) come back as 3-channel RGB.
    x = splits.train.get_batch(np.arange(len(splits.train)))
    assert_images(x, 21, 3, 224)
    assert get_dataset_info("caltech101").num_classes == 101


def test_every_file_based_transfer_target_loads(tmp_path: Path) -> None:
    write_dtd(tmp_path, ["banded", "blotchy", "braided"], per_split=2)
    write_oxford_pets(tmp_path, ["Abyssinian", "beagle"], per_split=2)
    write_fgvc_aircraft(tmp_path, ["707-320", "727-200", "A300B4"], per_split=1)
    write_food101(tmp_path, ["apple_pie", "baklava"], per_split=2)
    write_stanford_cars(tmp_path, per_split=2)
    write_sun397(tmp_path, ["abbey", "airport_terminal", "bus_interior"], per_class=3)
    write_flowers102(
        tmp_path,
        labels=[1, 2, 1, 2, 3, 3, 1, 2],
        setid={"trnid": [1, 2], "valid": [3, 4], "tstid": [5, 6, 7, 8]},
    )
    expected = {  # name: (train size, test size, train label counts)
        "dtd": (6, 6, [2, 2, 2]),
        "oxford_pets": (4, 4, [2, 2]),
        "fgvc_aircraft": (3, 3, [1, 1, 1]),
        "food101": (4, 4, [2, 2]),
        "stanford_cars": (6, 6, [2, 2, 2]),
        "flowers102": (4, 4, [2, 2]),  # train + val
    }
    with skip_integrity_checks("flowers102"):
        for name, (n_train, n_test, counts) in expected.items():
            check_available(name, LoadRequest(root=str(tmp_path)))
            splits = build(name, tmp_path)
            assert (len(splits.train), len(splits.test)) == (n_train, n_test), name
            assert np.bincount(splits.train.targets).tolist() == counts, name
            assert_images(splits.train.get_batch([0, n_train - 1]), 2, 3, 224)
            assert splits.info.mean == (0.485, 0.456, 0.406)
    sun = build("sun397", tmp_path, test_fraction=1 / 3)
    assert len(sun.train) == 6 and len(sun.test) == 3
    assert np.bincount(sun.test.targets).tolist() == [1, 1, 1]
    assert_images(sun.test.get_batch([0, 1, 2]), 3, 3, 224)


def test_cinic10_image_folders(tmp_path: Path) -> None:
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    train = write_image_folder(tmp_path / "cinic10" / "train", classes, per_class=2)
    write_image_folder(tmp_path / "cinic10" / "test", classes, per_class=1, seed=9)
    splits = build("cinic10", tmp_path, classes=(0, 9))
    assert_images(splits.x_train, 4, 3, 32)
    assert splits.y_train.tolist() == [0, 0, 1, 1] and len(splits.test) == 2
    assert torch.equal(splits.x_train[2], unit(train["x"][18]))  # PNGs come back exactly


def test_register_image_folder_with_and_without_split(tmp_path: Path) -> None:
    split = tmp_path / "mine"
    train = write_image_folder(split / "train", ["cats", "dogs", "owls"], 3, size=(24, 24))
    write_image_folder(split / "test", ["cats", "dogs", "owls"], 1, size=(30, 20), seed=4)
    info = register_image_folder("test_mine", "mine", num_classes=3, size=24)
    assert info.channels == 3 and "test_mine" in list_datasets()
    splits = build("test_mine", tmp_path)
    assert (len(splits.train), len(splits.test)) == (9, 3)
    assert torch.equal(splits.x_train, unit(train["x"]))
    assert_images(splits.x_test, 3, 3, 24)  # 30 x 20 -> shorter side 24, centre crop

    flat = tmp_path / "flat"
    write_image_folder(flat, ["a", "b"], 5, size=(16, 16), suffix=".jpg")
    register_image_folder("test_flat", flat, num_classes=2, size=8, channels=1)
    splits = build("test_flat", tmp_path / "elsewhere", test_fraction=0.4)
    assert (len(splits.train), len(splits.test)) == (6, 4)
    assert_images(splits.x_test, 4, 1, 8)
    assert splits.info.mean == (0.5,)

    register_image_folder("test_wrong", flat, num_classes=3, size=8)
    with pytest.raises(ValueError, match="2 class folders"):
        build("test_wrong", tmp_path)


# --- missing data -----------------------------------------------------------------------------

MISSING = {  # name: a folder the message must name, relative to the root
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "train_32x32.mat",
    "stl10": "stl10_binary",
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "imagenet": "imagenet",
    "flowers102": "flowers-102",
    "dtd": "dtd/dtd",
    "oxford_pets": "oxford-iiit-pet",
    "fgvc_aircraft": "fgvc-aircraft-2013b",
    "food101": "food-101",
    "caltech101": "caltech101",
    "stanford_cars": "stanford_cars",
    "sun397": "SUN397",
    "cinic10": "cinic10",
    "cub200": "cub200",
}


INFO = {  # name: (num_classes, channels, size)
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "svhn": (10, 3, 32),
    "stl10": (10, 3, 96),
    "mnist": (10, 1, 28),
    "fashion_mnist": (10, 1, 28),
    "imagenet": (1000, 3, 224),
    "flowers102": (102, 3, 224),
    "dtd": (47, 3, 224),
    "oxford_pets": (37, 3, 224),
    "fgvc_aircraft": (100, 3, 224),
    "food101": (101, 3, 224),
    "caltech101": (101, 3, 224),
    "stanford_cars": (196, 3, 224),
    "sun397": (397, 3, 224),
    "cinic10": (10, 3, 32),
    "cub200": (200, 3, 224),
}


def test_registered_datasets_describe_themselves() -> None:
    assert set(INFO) == set(MISSING) and set(INFO) <= set(list_datasets())
    for name, (num_classes, channels, size) in INFO.items():
        info = get_dataset_info(name)
        assert (info.num_classes, info.channels, info.size) == (num_classes, channels, size), name
        assert len(info.mean) == len(info.std) == channels and info.description, name
        assert all(0 < m < 1 and 0 < s < 1 for m, s in zip(info.mean, info.std, strict=True)), name


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_data_is_one_clear_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vision, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    root = tmp_path / "data"
    request = LoadRequest(root=str(root), download=False)
    with pytest.raises(DataMissingError) as from_check:
        check_available(name, request)
    with pytest.raises(DataMissingError) as from_build:
        build(name, root)
    for err in (from_check, from_build):
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{name}: ")
        assert str(root / MISSING[name]) in message
        assert "data.root" in message
    assert str(from_check.value) == str(from_build.value)
    assert not (root / "caltech101").exists()  # nothing created while looking


def test_partial_cifar_names_the_missing_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataMissingError, match=r"data_batch_3\): set data.root"):
        check_available("cifar10", LoadRequest(root=str(tmp_path)))


def test_digits_needs_no_files_and_unknown_names_are_refused(tmp_path: Path) -> None:
    check_available("digits", LoadRequest(root=str(tmp_path / "nothing")))
    with pytest.raises(KeyError, match="choose one of"):
        check_available("cifar1000", LoadRequest())


def test_default_root_is_env_var_else_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_root(LoadRequest()) == tmp_path / "data"
    monkeypatch.setenv("ATSWEEP_DATA_ROOT", str(tmp_path / "shared"))
    assert resolve_root(LoadRequest()) == tmp_path / "shared"
    assert resolve_root(LoadRequest(root="/x/y")) == Path("/x/y")
    write_mnist(tmp_path / "shared", n_train=2, n_test=2)
    assert len(build_dataset(DatasetRef("mnist"), DataConfig()).train) == 2


def test_corrupted_files_are_reported_with_the_dataset_name(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # fake files fail torchvision's md5 check: kept on in production
    with pytest.raises(RuntimeError, match=r"cifar10: torchvision could not read .* corrupted"):
        build("cifar10", tmp_path)


def test_download_flag_is_passed_to_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets as tvd

    calls: list[str] = []

    def fake_download(self: tvd.CIFAR10) -> None:  # stands in for the network
        calls.append(self.root)
        if not (Path(self.root) / "cifar-10-batches-py").exists():
            write_cifar10(Path(self.root), per_batch=1, n_test=2)

    monkeypatch.setattr(tvd.CIFAR10, "download", fake_download)
    root = tmp_path / "empty"
    check_available("cifar10", LoadRequest(root=str(root), download=True))  # may download: ok
    with skip_integrity_checks("cifar"):
        splits = build_dataset(DatasetRef("cifar10"), DataConfig(), str(root), download=True)
    assert len(splits.train) == 5 and calls == [str(root), str(root)]
    # Datasets torchvision cannot download are still checked when download is on.
    for name in ("imagenet", "stanford_cars", "cinic10"):
        with pytest.raises(DataMissingError, match="cannot"):
            check_available(name, LoadRequest(root=str(root), download=True))
