"""Adversarial training: per-epoch reports, checkpoints, and exact resumption."""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.conftest import ListReporter, make_digits_config
from trainables import training
from trainables.checkpoint import CheckpointError, load_checkpoint, read_manifest
from trainables.config import (
    AttackConfig,
    DataConfig,
    DatasetRef,
    OptimConfig,
    RunOptions,
    TrainConfig,
)
from trainables.data import Splits, build_dataset
from trainables.evals import build_untrained_model, load_trained_model
from trainables.training import DeviceSetup, compute_lr, run_training

pytestmark = pytest.mark.unit


def tiny_splits() -> Splits:
    return build_dataset(
        DatasetRef("digits", (0, 1, 2)), DataConfig(max_per_class=32, max_test_per_class=20)
    )


def tiny_config(eps: float = 0.5, epochs: int = 3) -> TrainConfig:
    return make_digits_config(
        (0, 1, 2), norm="l2", eps=eps, epochs=epochs, optimizer="sgd", lr=0.05
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


def test_robust_accuracy_every_n_epochs_is_the_same_numbers_minus_the_gaps() -> None:
    cfg, splits = tiny_config(epochs=5), tiny_splits()
    every, sparse = ListReporter(), ListReporter()
    run_training(cfg, splits, every)
    run_training(cfg, splits, sparse, options=RunOptions(robust_eval_every=2))
    pgd = [m["test/acc_pgd"] for m in sparse.metrics]
    # Epochs 2 and 4 (1-based) and the last one are measured; the others are NaN.
    assert [math.isnan(v) for v in pgd] == [True, False, True, False, False]
    for a, b in zip(every.metrics, sparse.metrics, strict=True):
        # Every random stream is seeded per epoch: skipping evaluations changes nothing else.
        assert b["train/loss"] == a["train/loss"]
        assert b["test/acc_clean"] == a["test/acc_clean"]
        if not math.isnan(b["test/acc_pgd"]):
            assert b["test/acc_pgd"] == a["test/acc_pgd"]


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


@pytest.mark.parametrize(
    "attack",
    [
        AttackConfig(method="fgsm_rs"),
        AttackConfig(method="free", replays=3),
        AttackConfig(method="pgd", steps=3, restarts=2),
    ],
    ids=["fgsm_rs", "free", "pgd_restarts"],
)
def test_every_training_method_trains_and_reports(
    attack: AttackConfig, digits_config: Callable[..., TrainConfig]
) -> None:
    cfg = digits_config(
        (0, 1, 2), norm="linf", eps=0.05, epochs=3, optimizer="adam", lr=5e-3, attack=attack
    )
    splits = build_dataset(cfg.source, DataConfig(max_per_class=100, max_test_per_class=30))
    rep = ListReporter()
    run_training(cfg, splits, rep)
    assert len(rep.metrics) == 3
    # Learning happens under every method: the loss falls from chance level (ln 3).
    assert rep.metrics[-1]["train/loss"] < 1.0
    assert rep.metrics[-1]["test/acc_clean"] > 0.6


def test_free_training_takes_replays_optimizer_steps_per_minibatch(
    digits_config: Callable[..., TrainConfig],
) -> None:
    cfg = digits_config(
        (0, 1, 2),
        norm="l2",
        eps=0.3,
        epochs=1,
        optimizer="adam",
        lr=1e-3,
        attack=AttackConfig(method="free", replays=3),
    )
    rep = ListReporter(Path(tempfile.mkdtemp()))
    run_training(cfg, tiny_splits(), rep)
    opt = load_file(str(rep.checkpoints[-1] / "optimizer.safetensors"))
    steps = {float(v) for k, v in opt.items() if k.endswith(".step")}
    batches = -(-len(tiny_splits().train) // 32)
    assert steps == {3.0 * batches}


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_follows_the_cpus_native_bf16(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    auto = DeviceSetup(torch.device("cpu"), RunOptions())
    assert (auto.bf16, auto.channels_last) == (native, native)
    fp32 = DeviceSetup(torch.device("cpu"), RunOptions(precision="fp32"))
    assert not fp32.bf16 and not fp32.channels_last
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forced = DeviceSetup(torch.device("cpu"), RunOptions(precision="bf16"))
    assert forced.bf16 and forced.channels_last
    # Emulated bf16 is many times slower: asking for it where it is not native says so.
    assert len(caught) == (0 if native else 1)
    with pytest.raises(ValueError, match="channels_last 'yes'"):
        DeviceSetup(torch.device("cpu"), RunOptions(channels_last="yes"))


def test_a_bf16_trial_on_the_cpu_trains_in_bf16_and_tracks_fp32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack and the step under bf16 autocast (as precision auto does on a CPU with native
    bf16): every step's logits are bf16, and the losses and accuracies follow the fp32 run's."""
    cfg = make_digits_config((0, 1, 2), norm="l2", eps=0.5, epochs=6)
    fp32 = ListReporter()
    run_training(cfg, tiny_splits(), fp32, options=RunOptions(precision="fp32"))
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: True)
    seen: list[torch.dtype] = []
    real_step = training.training_step

    def step(
        model: nn.Module, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = real_step(model, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(logits.dtype)
        return loss, logits

    monkeypatch.setattr(training, "training_step", step)
    bf16 = ListReporter()
    run_training(cfg, tiny_splits(), bf16)
    assert set(seen) == {torch.bfloat16}
    # Each epoch says which precision it ran in (the study tags the trial's run with it).
    assert (
        {m["trial/bf16"] for m in bf16.metrics}
        == {1.0}
        == {m["trial/channels_last"] for m in bf16.metrics}
    )
    assert {m["trial/bf16"] for m in fp32.metrics} == {0.0}
    for a, b in zip(fp32.metrics, bf16.metrics, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=0.02)
        assert b["test/acc_clean"] == pytest.approx(a["test/acc_clean"], abs=0.1)
        assert b["test/acc_pgd"] == pytest.approx(a["test/acc_pgd"], abs=0.1)
    assert bf16.metrics[-1]["train/loss"] < bf16.metrics[0]["train/loss"] - 0.05
    assert bf16.metrics[-1]["test/acc_clean"] > 0.6


def test_deterministic_mode_reproduces_a_run_bit_for_bit() -> None:
    cfg = tiny_config(epochs=1)
    cfg = TrainConfig(**{**cfg.__dict__, "deterministic": True})
    a = run_training(cfg, tiny_splits(), ListReporter())
    b = run_training(cfg, tiny_splits(), ListReporter())
    torch.use_deterministic_algorithms(False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_uses_bf16_autocast_and_channels_last() -> None:
    setup = DeviceSetup(torch.device("cuda"), RunOptions())
    assert setup.bf16 and setup.channels_last
    rep = ListReporter()
    run_training(tiny_config(epochs=1), tiny_splits(), rep, device="cuda")
    assert rep.metrics[0]["test/acc_clean"] > 0


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile on the CPU needs a C++ compiler",
)
def test_training_compile_runs_the_step_and_the_attack_compiled_with_eager_numerics() -> None:
    """training.compile: true: torch.compile traces the network (dynamo counts the frames it
    compiles: the training forward, the attack's input-only forward and backward, the eval
    forward) and the epoch's losses and accuracies are the eager run's, to rounding."""
    import torch._dynamo

    cfg = tiny_config(eps=0.5, epochs=1)
    eager = ListReporter()
    run_training(cfg, tiny_splits(), eager)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = ListReporter()
    run_training(cfg, tiny_splits(), compiled, options=RunOptions(compile=True))
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["ok"] >= 1, dict(frames)
    for key in ("train/loss", "train/acc", "test/acc_clean", "test/acc_pgd"):
        assert compiled.metrics[0][key] == pytest.approx(eager.metrics[0][key], abs=1e-3), key
    torch._dynamo.reset()
