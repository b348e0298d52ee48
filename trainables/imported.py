"""Networks trained elsewhere: their checkpoint file fetched and checked, then made one of ours.

A published network is given by a location: a local path, a URI the storage layer reads
(s3://...), or an http(s) URL fetched only when download is on, into a cache folder, and checked
against the sha256 the entry may give. `check_network` loads the file onto the registered arch
(trainables/checkpoint_import.py: weights_only or safetensors, strict keys) without writing
anything; `import_network` writes the loaded network as one of this project's checkpoints
(safetensors and a checksummed manifest) in the study's results folder, which every evaluation
then loads like the checkpoint of a network trained here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import asdict
from pathlib import Path

from trainables import storage
from trainables.checkpoint import MANIFEST, save_checkpoint, sha256_file
from trainables.checkpoint_import import (
    CheckpointImportError,
    ImportReport,
    load_external_checkpoint,
)
from trainables.config import ImportedConfig, to_canonical
from trainables.evals import build_untrained_model
from trainables.models import Classifier


def is_url(location: str) -> bool:
    """Whether a location is fetched over HTTP(S) rather than read from a filesystem."""
    return location.startswith(("http://", "https://"))


def cached_path(location: str, cache_dir: Path) -> Path:
    """Where a URL's or a remote URI's file is kept on this machine: one folder per location."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    name = location.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "checkpoint"
    return cache_dir / "checkpoints" / digest / name


def _download(url: str, target: Path) -> None:
    """Fetch a URL into target: under a temporary name first, so a cut download is not kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url) as response, partial.open("wb") as fh:
            shutil.copyfileobj(response, fh, length=1 << 20)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CheckpointImportError(
            f"could not download {url} ({exc}): check the URL and this machine's internet "
            f"access, or fetch the file by hand to {target}"
        ) from exc
    os.replace(partial, target)


def fetch_checkpoint(
    location: str, *, download: bool, cache_dir: Path, sha256: str | None = None
) -> Path:
    """The checkpoint file of a location on this machine, its sha256 checked when one is given.

    A local path is used where it is; a remote URI is copied into the cache once; a URL is
    downloaded into the cache only with download on (otherwise an error saying where to put
    the file). Raises CheckpointImportError with the fix.
    """
    if is_url(location):
        local = cached_path(location, cache_dir)
        if not local.is_file():
            if not download:
                raise CheckpointImportError(
                    f"{location} is not in the cache ({local}) and download is off: set "
                    f"download: true on a machine with internet, or fetch it there with "
                    f"`curl -L --create-dirs -o {local} {location}`"
                )
            _download(location, local)
    elif storage.is_remote(location):
        local = cached_path(location, cache_dir)
        if not local.is_file():
            if not storage.exists(location):
                raise CheckpointImportError(f"{location} does not exist: check the URI")
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(local.name + ".part")
            partial.write_bytes(storage.read_bytes(location))
            os.replace(partial, local)
    else:
        local = Path(location).expanduser().resolve()
        if not local.is_file():
            what = "is a directory, not a checkpoint file" if local.is_dir() else "does not exist"
            raise CheckpointImportError(f"{local} {what}: check the path")
    if sha256 is not None:
        actual = sha256_file(local)
        if actual != sha256.lower():
            raise CheckpointImportError(
                f"{local} has sha256 {actual}, not the {sha256} the entry gives: the file is "
                "another network or a damaged copy; delete it and fetch it again, or correct "
                "the entry's sha256"
            )
    return local


def load_network(cfg: ImportedConfig, local: Path, fmt: str) -> tuple[Classifier, ImportReport]:
    """The network of an imported checkpoint on cfg's arch and source head, in eval mode."""
    model = build_untrained_model(cfg)
    report = load_external_checkpoint(local, model, format=fmt, mean=cfg.mean, std=cfg.std)
    return model.eval(), report


def check_network(cfg: ImportedConfig, local: Path, fmt: str) -> ImportReport:
    """Load the file onto cfg's arch (raising CheckpointImportError on any misfit); writes
    nothing."""
    return load_network(cfg, local, fmt)[1]


def import_network(cfg: ImportedConfig, local: Path, fmt: str, destination: str) -> ImportReport:
    """Write the imported network at destination as one of this project's checkpoints (model
    weights and a checksummed manifest holding the config and the import report)."""
    model, report = load_network(cfg, local, fmt)
    config = {"imported": to_canonical(asdict(report)), "trial": to_canonical(cfg)}
    with tempfile.TemporaryDirectory(prefix="atsweep-import-") as scratch:
        folder = save_checkpoint(Path(scratch) / "checkpoint", model, None, epoch=0, config=config)
        names = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST)
        # The manifest last: a folder with a manifest is complete (read_manifest checks it).
        for name in [*names, MANIFEST]:
            storage.upload_file(folder / name, storage.join(destination, name))
    return report
