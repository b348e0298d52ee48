"""Checkpoints: newest valid one found, corrupted ones skipped by name, pickles never executed."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ListReporter, make_digits_config
from trainables.checkpoint import (
    CheckpointError,
    find_latest_valid_checkpoint,
    load_checkpoint,
    read_manifest,
    sha256_file,
)
from trainables.config import DataConfig
from trainables.data import build_dataset
from trainables.evals import build_untrained_model
from trainables.training import run_training

pytestmark = pytest.mark.unit

CFG = make_digits_config(
    (0, 1, 2),
    norm="l2",
    eps=0.0,
    epochs=3,
    optimizer="adam",
    lr=3e-3,
    data=DataConfig(max_per_class=20, max_test_per_class=10),
)


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trial folder laid out as Tune does: checkpoint_000000 .. checkpoint_000002."""
    kept = tmp_path_factory.mktemp("kept")
    rep = ListReporter(kept)
    run_training(CFG, build_dataset(CFG.source, CFG.data), rep)
    folder = tmp_path_factory.mktemp("trial")
    for i, ckpt in enumerate(rep.checkpoints):
        shutil.copytree(ckpt, folder / f"checkpoint_{i:06d}")
    return folder


def copy_of(trial_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "trial"
    shutil.copytree(trial_dir, dest)
    return dest


def test_the_newest_valid_checkpoint_is_chosen_and_carries_the_history(trial_dir: Path) -> None:
    found, warnings = find_latest_valid_checkpoint([trial_dir])
    assert found == trial_dir / "checkpoint_000002" and warnings == []
    history = read_manifest(found)["history"]
    assert [int(m["epoch"]) for m in history] == [0, 1, 2]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(
    trial_dir: Path, tmp_path: Path, damage: str
) -> None:
    folder = copy_of(trial_dir, tmp_path)
    bad = folder / "checkpoint_000002" / "model.safetensors"
    data = bytearray(bad.read_bytes())
    if damage == "truncate":
        bad.write_bytes(bytes(data[: len(data) // 3]))
    else:
        data[len(data) // 2] ^= 0x01
        bad.write_bytes(bytes(data))
    found, warnings = find_latest_valid_checkpoint([folder])
    assert found == folder / "checkpoint_000001"
    assert len(warnings) == 1 and str(bad) in warnings[0]


def test_resuming_uses_the_fallback_and_finishes_the_run(trial_dir: Path, tmp_path: Path) -> None:
    folder = copy_of(trial_dir, tmp_path)
    (folder / "checkpoint_000002" / "manifest.json").unlink()  # an interrupted write
    found, _ = find_latest_valid_checkpoint([folder])
    rep = ListReporter()
    run_training(CFG, build_dataset(CFG.source, CFG.data), rep, resume_from=found)
    assert [m["epoch"] for m in rep.metrics] == [2]


class _Planted:
    """An object whose unpickling would write a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "executed"))


def test_a_planted_pickle_is_refused_and_never_executed(trial_dir: Path, tmp_path: Path) -> None:
    folder = copy_of(trial_dir, tmp_path)
    ckpt = folder / "checkpoint_000002"
    marker = tmp_path / "marker.txt"
    weights = ckpt / "model.safetensors"
    weights.write_bytes(pickle.dumps(_Planted(marker)))
    torch.save({"x": _Planted(marker)}, ckpt / "extra.pt")
    # The attacker also rewrites the manifest so that the checksum matches.
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256_file(weights)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(ckpt, build_untrained_model(CFG))
    assert not marker.exists()
