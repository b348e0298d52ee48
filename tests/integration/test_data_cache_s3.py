"""A data root on S3 (moto's server): a folder under it copied once into the node cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables import storage
from trainables.data.cache import cache_root_for, is_complete, materialise

pytestmark = pytest.mark.integration


def test_an_s3_folder_is_copied_once_into_the_node_cache(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    files = {"a.bin": bytes(range(256)) * 5000, "sub/b.txt": b"b\n", "sub/deeper/c.txt": b""}
    for rel, data in files.items():
        storage.write_bytes(f"s3://results/data/somefolder/{rel}", data)
    uri, cache_dir = "s3://results/data", tmp_path / "cache"
    seen: list[str] = []
    root, copied = materialise(uri, ["somefolder"], cache_dir=cache_dir, on_file=seen.append)
    assert root == cache_root_for(uri, cache_dir) and copied == ["somefolder"]
    assert sorted(seen) == [f"somefolder/{rel}" for rel in sorted(files)]
    local = root / "somefolder"
    assert {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()} == (
        files
    )
    assert is_complete(uri, "somefolder", cache_dir)
    assert materialise(uri, ["somefolder/"], cache_dir=cache_dir, on_file=seen.append) == (root, [])
    assert len(seen) == len(files)
    with pytest.raises(FileNotFoundError, match=r"s3://results/data/absent does not exist"):
        materialise(uri, ["absent"], cache_dir=cache_dir)


def test_a_dataset_under_an_s3_data_root_loads_from_the_node_cache(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ImageFolder of JPEGs uploaded under s3://results/data: build_dataset with that root
    copies it into the cache once and reads the same images as from the local folder."""
    import numpy as np
    import torch

    from tests.dataset_fixtures import write_jpeg_folder
    from trainables.catalog import DataMissingError
    from trainables.config import DataConfig, DatasetRef, LoadRequest
    from trainables.data import build_dataset, iterate_batches
    from trainables.data.vision import check_available, register_image_folder

    local = tmp_path / "local"
    paths = write_jpeg_folder(local / "jpegs", ["x", "y"], per_class=3, sides=(140, 200))
    for path in paths:
        storage.write_bytes(f"s3://results/data/{path.relative_to(local)}", path.read_bytes())
    monkeypatch.setenv("ATSWEEP_DATA_CACHE", str(tmp_path / "cache"))
    register_image_folder("test_s3_jpegs", "jpegs", num_classes=2, size=128)
    ref, data = DatasetRef("test_s3_jpegs"), DataConfig(test_fraction=0.5)
    check_available("test_s3_jpegs", LoadRequest(root="s3://results/data"))
    remote = build_dataset(ref, data, root="s3://results/data", workers=1)
    cached = cache_root_for("s3://results/data", tmp_path / "cache")
    assert sorted(p.name for p in (cached / "jpegs").rglob("*.JPEG")) == sorted(
        p.name for p in paths
    )
    assert is_complete("s3://results/data", "jpegs", tmp_path / "cache")
    here = build_dataset(ref, data, root=str(local))
    for a, b in ((remote.train, here.train), (remote.test, here.test)):
        xa = torch.cat([x for x, _ in iterate_batches(a, 2)])
        xb = torch.cat([x for x, _ in iterate_batches(b, 2)])
        assert torch.equal(xa, xb) and np.array_equal(a.targets, b.targets)
    with pytest.raises(DataMissingError, match=r"s3://results/elsewhere/jpegs"):
        check_available("test_s3_jpegs", LoadRequest(root="s3://results/elsewhere"))
