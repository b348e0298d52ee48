"""Adversarial training: per-epoch reports, checkpoints, and exact resumption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import ListReporter
from trainables.checkpoint import CheckpointError, load_checkpoint, read_manifest
from trainables.config import ArchRef, DataConfig, DatasetRef, OptimConfig, TrainConfig
from trainables.data import Splits, build_dataset
from trainables.evals import build_untrained_model, load_trained_model
from trainables.training import compute_lr, run_training

pytestmark = pytest.mark.unit


def tiny_splits() -> Splits:
    s = build_dataset(DatasetRef("digits", (0, 1, 2)), DataConfig())
    return Splits(
        s.x_train[:96], s.y_train[:96], s.x_test[:64], s.y_test[:64], s.num_classes, s.info
    )


def tiny_config(eps: float = 0.5, epochs: int = 3) -> TrainConfig:
    return TrainConfig(
        source=DatasetRef("digits", (0, 1, 2)),
        arch=ArchRef("small_cnn", 0.5),
        norm="l2",
        eps=eps,
        seed=0,
        optim=OptimConfig(epochs=epochs, batch_size=32, optimizer="sgd", lr=0.05),
    )


def test_reports_every_epoch_with_metrics_and_a_checkpoint(tmp_path: Path) -> None:
    rep = ListReporter(tmp_path)
    run_training(tiny_config(), tiny_splits(), rep)
    assert [m["epoch"] for m in rep.metrics] == [0, 1, 2]
    for m in rep.metrics:
        for key in ("train/loss", "train/acc", "test/acc_clean", "test/acc_pgd"):
            assert key in m
        assert 0 <= m["test/acc_pgd"] <= 1 and 0 <= m["test/acc_clean"] <= 1
    assert [read_manifest(c)["epoch"] for c in rep.checkpoints] == [0, 1, 2]


def test_pgd_accuracy_is_at_most_clean_accuracy(tmp_path: Path) -> None:
    rep = ListReporter()
    run_training(tiny_config(eps=1.0), tiny_splits(), rep)
    assert all(m["test/acc_pgd"] <= m["test/acc_clean"] for m in rep.metrics)


def test_eps_zero_reports_pgd_equal_to_clean() -> None:
    rep = ListReporter()
    run_training(tiny_config(eps=0.0, epochs=1), tiny_splits(), rep)
    assert rep.metrics[0]["test/acc_pgd"] == rep.metrics[0]["test/acc_clean"]


class _StopError(Exception):
    pass


class _StopAfter:
    """Stops training after n epochs, like a worker killed right after its checkpoint."""

    def __init__(self, inner: ListReporter, n: int) -> None:
        self.inner, self.n = inner, n

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.inner.report(metrics, checkpoint_dir)
        if len(self.inner.metrics) >= self.n:
            raise _StopError


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path: Path) -> None:
    cfg, splits = tiny_config(), tiny_splits()
    straight = ListReporter(tmp_path / "a")
    model_a = run_training(cfg, splits, straight)
    first = ListReporter(tmp_path / "b")
    with pytest.raises(_StopError):
        run_training(cfg, splits, _StopAfter(first, 1))
    resumed = ListReporter(tmp_path / "c")
    model_b = run_training(cfg, splits, resumed, resume_from=first.checkpoints[-1])
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    assert resumed.metrics[-1]["train/loss"] == pytest.approx(
        straight.metrics[-1]["train/loss"], rel=1e-5
    )
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_checkpoint_loads_with_the_config_alone(tmp_path: Path) -> None:
    rep = ListReporter(tmp_path)
    cfg = tiny_config(epochs=1)
    model = run_training(cfg, tiny_splits(), rep)
    loaded = load_trained_model(cfg, rep.checkpoints[-1])
    x = tiny_splits().x_test[:8]
    assert torch.allclose(model.eval()(x), loaded(x), atol=1e-6)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_checkpoint_is_rejected_by_its_checksum(tmp_path: Path, damage: str) -> None:
    rep = ListReporter(tmp_path)
    cfg = tiny_config(epochs=1)
    run_training(cfg, tiny_splits(), rep)
    weights = rep.checkpoints[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(rep.checkpoints[-1], build_untrained_model(cfg))


def test_cosine_schedule_starts_at_lr_and_decays_to_zero() -> None:
    optim = OptimConfig(epochs=10, lr=0.1, schedule="cosine")
    assert compute_lr(optim, 0, 0, 5) == pytest.approx(0.1)
    assert compute_lr(optim, 5, 0, 5) == pytest.approx(0.05)
    assert compute_lr(optim, 9, 4, 5) < 0.001
    step = OptimConfig(epochs=10, lr=0.1, schedule="step", step_every=4, step_gamma=0.1)
    assert compute_lr(step, 3, 0, 5) == pytest.approx(0.1) and compute_lr(
        step, 4, 0, 5
    ) == pytest.approx(0.01)
