"""Checkpoints as safetensors files plus a manifest of sha256 checksums; never pickles.

A checkpoint directory holds model.safetensors, optimizer.safetensors and manifest.json (epoch,
config, file checksums). Loading verifies every checksum before reading a tensor, so a truncated
or corrupted file is rejected with its name instead of silently loading garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or fails its checksum."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter tensors (momentum, Adam moments, step) as a flat dict."""
    flat: dict[str, torch.Tensor] = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            flat[f"{idx}.{name}"] = tensor.detach().cpu().contiguous()
    return flat


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]
) -> None:
    """Inverse of flatten_optimizer_state; hyperparameters come from the config, not the file."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in flat.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = tensor
    current = optimizer.state_dict()
    current["state"] = state
    optimizer.load_state_dict(current)


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    epoch: int,
    config: dict[str, Any],
    history: list[dict[str, float]] | None = None,
) -> Path:
    """Write weights, optimiser state and a checksummed manifest; the manifest goes last.

    history holds the metrics of every epoch so far, so that the results of epochs whose
    reports were lost (a driver killed before it wrote them) can be recovered from the
    checkpoint.
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / MODEL_FILE))
    files = [MODEL_FILE]
    if optimizer is not None:
        save_file(flatten_optimizer_state(optimizer), str(directory / OPTIM_FILE))
        files.append(OPTIM_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "config": config,
        "history": history or [],
        "files": {name: sha256_file(directory / name) for name in files},
    }
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)
    return directory


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a checkpoint after checking every listed file against its checksum."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST}: not a complete checkpoint")
    manifest: dict[str, Any] = json.loads(path.read_text())
    for name, expected in manifest["files"].items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        if sha256_file(file) != expected:
            raise CheckpointError(f"checkpoint file {file} fails its sha256 checksum (corrupted)")
    return manifest


def load_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify and load weights (and optimiser state when given) in place; returns the manifest."""
    manifest = read_manifest(directory)
    device = str(next(model.parameters()).device)
    model.load_state_dict(_load_tensors(directory / MODEL_FILE, device))
    if optimizer is not None and OPTIM_FILE in manifest["files"]:
        restore_optimizer_state(optimizer, _load_tensors(directory / OPTIM_FILE, device))
    return manifest


def _load_tensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    """safetensors only: a file that is not one (a planted pickle) is refused, never executed."""
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise CheckpointError(
            f"checkpoint file {path} is not a valid safetensors file ({exc})"
        ) from exc


def checkpoint_epoch(directory: Path) -> int:
    """The epoch a checkpoint directory holds, from its manifest (-1 when unreadable)."""
    try:
        return int(json.loads((directory / MANIFEST).read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


def find_latest_valid_checkpoint(trial_dirs: list[Path]) -> tuple[Path | None, list[str]]:
    """The checkpoint with the highest epoch among trial_dirs/checkpoint_* that passes its
    checksums, and a warning for every newer one that did not (naming the bad file)."""
    candidates = [c for d in trial_dirs if d.is_dir() for c in d.glob("checkpoint_*") if c.is_dir()]
    candidates.sort(key=lambda c: (checkpoint_epoch(c), c.name), reverse=True)
    warnings: list[str] = []
    for candidate in candidates:
        try:
            read_manifest(candidate)
        except CheckpointError as exc:
            warnings.append(f"skipping checkpoint {candidate}: {exc}")
            continue
        return candidate, warnings
    return None, warnings
