"""Fetching a published network's file: over HTTP from a server on 127.0.0.1, and from S3 (moto's
server); each once into the cache, checked against its sha256, never without download on."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.published import safetensors_file
from trainables import storage
from trainables.checkpoint_import import CheckpointImportError, load_external_checkpoint
from trainables.config import ArchRef
from trainables.imported import cached_path, fetch_checkpoint
from trainables.models import ModelInput, build_model

pytestmark = pytest.mark.integration


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTP server on 127.0.0.1 serving a folder: (base URL, folder, the paths requested)."""
    served = tmp_path / "served"
    served.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, requested
    finally:
        server.shutdown()
        server.server_close()


def small_network_file(path: Path) -> Path:
    model = build_model(ArchRef("small_cnn", 0.25), ModelInput(1, 8, (0.3,), (0.4,)), 5)
    return safetensors_file(path, model)


def test_a_url_is_downloaded_once_into_the_cache_and_checked(
    http_folder: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    base, served, requested = http_folder
    original = small_network_file(served / "net.safetensors")
    digest = hashlib.sha256(original.read_bytes()).hexdigest()
    url = f"{base}/net.safetensors"
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointImportError, match="download is off"):
        fetch_checkpoint(url, download=False, cache_dir=cache)
    assert requested == [] and not (cache / "checkpoints").exists()

    local = fetch_checkpoint(url, download=True, cache_dir=cache, sha256=digest)
    assert local == cached_path(url, cache) and local.read_bytes() == original.read_bytes()
    assert not list(local.parent.glob("*.part"))
    assert len(requested) == 1
    # In the cache now: read from there, with download off too, without another request.
    assert fetch_checkpoint(url, download=False, cache_dir=cache, sha256=digest) == local
    assert len(requested) == 1
    model = build_model(ArchRef("small_cnn", 0.25), ModelInput(1, 8, (0.5,), (0.5,)), 5)
    assert load_external_checkpoint(local, model).format == "safetensors"


def test_a_missing_url_is_an_error_that_keeps_nothing(
    http_folder: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    base, _, _ = http_folder
    url = f"{base}/gone.pt"
    with pytest.raises(CheckpointImportError, match=r"could not download .*gone\.pt.*404"):
        fetch_checkpoint(url, download=True, cache_dir=tmp_path)
    folder = cached_path(url, tmp_path).parent
    assert not folder.exists() or not any(folder.iterdir())


def test_an_s3_checkpoint_is_copied_once_into_the_cache(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    local_file = small_network_file(tmp_path / "net.safetensors")
    uri = "s3://results/zoo/net.safetensors"
    storage.upload_file(local_file, uri)
    cached = fetch_checkpoint(uri, download=False, cache_dir=tmp_path / "cache")
    assert cached.read_bytes() == local_file.read_bytes()
    assert cached == cached_path(uri, tmp_path / "cache")
    with pytest.raises(CheckpointImportError, match=r"s3://results/zoo/other\.pt does not exist"):
        fetch_checkpoint("s3://results/zoo/other.pt", download=False, cache_dir=tmp_path)
