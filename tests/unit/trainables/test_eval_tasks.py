"""Every evaluation kind, run from a real checkpoint through run_evaluation (no Ray), and the
registry that run_evaluation dispatches through."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import ListReporter
from trainables import evals
from trainables.config import (
    AttackConfig,
    DataConfig,
    DatasetRef,
    EvalTask,
    FinetuneConfig,
    FisherConfig,
    InversionConfig,
    InversionRequest,
    ProbeConfig,
    RobustnessConfig,
    TrainConfig,
)
from trainables.data import build_dataset
from trainables.evals import EVAL_KINDS, register_evaluator, run_evaluation
from trainables.training import run_training

pytestmark = pytest.mark.unit

DATA = DataConfig(max_per_class=40, max_test_per_class=20)
TARGET = DatasetRef("digits", (5, 6, 7))


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, digits_config: Callable[..., TrainConfig]
) -> tuple[TrainConfig, Path]:
    cfg = digits_config(
        (0, 1, 2, 3),
        norm="l2",
        eps=0.5,
        epochs=2,
        optimizer="adam",
        lr=5e-3,
        attack=AttackConfig(steps=2),
        eval_attack=AttackConfig(steps=2),
        data=DATA,
    )
    rep = ListReporter(tmp_path_factory.mktemp("ckpt"))
    run_training(cfg, build_dataset(cfg.source, DATA), rep)
    return cfg, rep.checkpoints[-1]


def every_task(cfg: TrainConfig, ckpt: Path, tmp_path: Path) -> dict[str, EvalTask]:
    """One task of each evaluation kind on the trained network."""
    probe = ProbeConfig(c_grid=(0.1, 1.0))
    tasks = {
        "transfer": EvalTask(
            "transfer", "k", DATA, probe, train=cfg, checkpoint=str(ckpt), target=TARGET
        ),
        "random_init": EvalTask("random_init", "k", DATA, probe, train=cfg, target=TARGET),
        "raw_pixels": EvalTask("raw_pixels", "k", DATA, probe, target=TARGET),
        "fisher": EvalTask(
            "fisher",
            "k",
            DATA,
            FisherConfig(num_samples=16, probes=4, eigen_iters=10),
            train=cfg,
            checkpoint=str(ckpt),
        ),
        "fisher_random_init": EvalTask(
            "fisher_random_init",
            "k",
            DATA,
            FisherConfig(num_samples=16, probes=4, eigen_iters=10),
            train=cfg,
        ),
        "robustness": EvalTask(
            "robustness",
            "k",
            DATA,
            RobustnessConfig(eps=1.0, attack=AttackConfig(steps=5), num_samples=40),
            train=cfg,
            checkpoint=str(ckpt),
        ),
        "source_accuracy": EvalTask(
            "source_accuracy",
            "k",
            DATA,
            RobustnessConfig(eps=1.0, attack=AttackConfig(steps=5), num_samples=1 << 31),
            train=cfg,
            checkpoint=str(ckpt),
        ),
        "inversion": EvalTask(
            "inversion",
            "k",
            DATA,
            InversionRequest(InversionConfig(steps=10), num_images=3),
            train=cfg,
            checkpoint=str(ckpt),
            artifact_path=str(tmp_path / "grid.png"),
        ),
        "finetune": EvalTask(
            "finetune",
            "k",
            DATA,
            FinetuneConfig(epochs=10, lr=0.1, batch_size=16),
            train=cfg,
            checkpoint=str(ckpt),
            target=TARGET,
        ),
    }
    assert set(tasks) == set(EVAL_KINDS)
    return tasks


def check_results(out: dict[str, dict]) -> None:
    for result in out.values():
        assert result["wall_time_s"] > 0
    for kind in ("transfer", "random_init", "raw_pixels", "finetune"):
        assert 1 / 3 < out[kind]["test_acc"] <= 1, kind
    assert out["transfer"]["c"] in (0.1, 1.0)
    fisher = out["fisher"]
    assert 0 < fisher["input_eig"] <= fisher["input_trace"] * 1.5
    assert set(fisher["weight_trace_per_layer"]) >= {"head"}
    # The untrained network of the same arch and seed: the same measurement, another network.
    untrained = out["fisher_random_init"]
    assert untrained["input_trace"] > 0 and untrained["weight_trace"] > 0
    assert untrained["input_trace"] != fisher["input_trace"]
    assert set(untrained) == set(fisher)
    rob = out["robustness"]
    assert 0 <= rob["robust_acc"] <= rob["clean_acc"] <= 1 and rob["eval_attack"] == "pgd5"
    # The whole source test split, under the names training reports.
    source = out["source_accuracy"]
    assert source["n_samples"] > rob["n_samples"] and source["eval_attack"] == "pgd5"
    assert 0 <= source["test_acc_pgd"] <= source["test_acc_clean"] <= 1
    inv = out["inversion"]
    assert inv["n_images"] == 3 and Path(inv["grid_path"]).is_file() and inv["psnr"] > 0
    assert inv["mean_image_psnr"] > 0 and inv["start_psnr"] > 0
    assert (inv["optimizer"], inv["schedule"]) == ("adam", "cosine")
    assert isinstance(inv["converged"], bool) and inv["start_relative_error"] > 0


def test_every_kind_runs_from_a_checkpoint(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, ckpt = trained
    tasks = every_task(cfg, ckpt, tmp_path)
    check_results({kind: run_evaluation(task) for kind, task in tasks.items()})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_kind_runs_on_cuda(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An evaluation given a GPU (resources.gpus_per_eval) runs each kind on it."""
    cfg, ckpt = trained
    tasks = every_task(cfg, ckpt, tmp_path)
    check_results({kind: run_evaluation(task, "cuda") for kind, task in tasks.items()})


def test_unknown_kind_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="finetune"):
        run_evaluation(EvalTask("nope", "k", DATA, None))


BUILTIN_KINDS = (
    "transfer",
    "random_init",
    "raw_pixels",
    "fisher",
    "fisher_random_init",
    "robustness",
    "source_accuracy",
    "inversion",
    "finetune",
)


@pytest.fixture
def restore_evaluators() -> Iterator[None]:
    """The evaluator registry as it was before the test (which registers kinds of its own)."""
    saved = dict(evals._EVALUATORS)
    yield
    evals._EVALUATORS.clear()
    evals._EVALUATORS.update(saved)


def test_a_registered_kind_runs_through_run_evaluation(restore_evaluators: None) -> None:
    calls: list[tuple[EvalTask, str]] = []

    def count_classes(task: EvalTask, device: Any) -> dict[str, Any]:
        calls.append((task, device))
        time.sleep(0.02)
        assert task.target is not None and task.target.classes is not None
        assert isinstance(task.settings, ProbeConfig)
        return {"n_classes": len(task.target.classes), "c_max": max(task.settings.c_grid)}

    assert "count_classes" not in EVAL_KINDS
    register_evaluator("count_classes", count_classes)
    assert set(EVAL_KINDS) == {*BUILTIN_KINDS, "count_classes"}
    task = EvalTask("count_classes", "k", DATA, ProbeConfig(c_grid=(0.5, 2.0)), target=TARGET)
    out = run_evaluation(task, "cpu")
    assert calls == [(task, "cpu")]
    assert out["n_classes"] == 3 and out["c_max"] == 2.0
    assert out["wall_time_s"] >= 0.02  # run_evaluation times the evaluator it dispatched to


def test_an_unknown_kind_names_every_registered_kind(restore_evaluators: None) -> None:
    register_evaluator("count_classes", lambda task, device: {})
    with pytest.raises(ValueError, match="unknown evaluation kind 'nope'") as err:
        run_evaluation(EvalTask("nope", "k", DATA, None))
    for kind in (*BUILTIN_KINDS, "count_classes"):
        assert kind in str(err.value), kind
    assert "register_evaluator" in str(err.value)
    with pytest.raises(ValueError, match="non-empty string, got ''"):
        register_evaluator("", lambda task, device: {})
    with pytest.raises(TypeError, match="must be a function"):
        register_evaluator("count_classes", {"not": "callable"})  # type: ignore[arg-type]
    assert set(EVAL_KINDS) == {*BUILTIN_KINDS, "count_classes"}  # a refused one changes nothing


def test_a_task_without_what_its_kind_needs_says_what_is_missing(
    digits_config: Callable[..., TrainConfig],
) -> None:
    cfg = digits_config()
    wrong = EvalTask("fisher", "k", DATA, ProbeConfig(), train=cfg, checkpoint="unused")
    with pytest.raises(TypeError, match="'fisher' needs settings of type FisherConfig, got Probe"):
        run_evaluation(wrong)
    with pytest.raises(ValueError, match=r"'transfer' needs task\.train, got None"):
        run_evaluation(EvalTask("transfer", "k", DATA, ProbeConfig(), target=TARGET))
