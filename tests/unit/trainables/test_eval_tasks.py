"""Every evaluation kind, run from a real checkpoint through run_evaluation (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import ListReporter
from trainables.config import (
    ArchRef,
    AttackConfig,
    DataConfig,
    DatasetRef,
    FisherConfig,
    OptimConfig,
    ProbeConfig,
    RobustnessConfig,
    TrainConfig,
)
from trainables.data import build_dataset
from trainables.evals import EVAL_KINDS, EvalTask, run_evaluation
from trainables.evals.finetune import FinetuneConfig
from trainables.evals.inversion import InversionConfig
from trainables.training import run_training

pytestmark = pytest.mark.unit

DATA = DataConfig(max_per_class=40, max_test_per_class=20)
TARGET = DatasetRef("digits", (5, 6, 7))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    cfg = TrainConfig(
        source=DatasetRef("digits", (0, 1, 2, 3)),
        arch=ArchRef("small_cnn", 0.5),
        norm="l2",
        eps=0.5,
        seed=0,
        optim=OptimConfig(epochs=2, batch_size=32, optimizer="adam", lr=5e-3),
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
            "transfer", "k", DATA, train=cfg, checkpoint=str(ckpt), target=TARGET, probe=probe
        ),
        "random_init": EvalTask("random_init", "k", DATA, train=cfg, target=TARGET, probe=probe),
        "raw_pixels": EvalTask("raw_pixels", "k", DATA, target=TARGET, probe=probe),
        "fisher": EvalTask(
            "fisher",
            "k",
            DATA,
            train=cfg,
            checkpoint=str(ckpt),
            fisher=FisherConfig(num_samples=16, probes=4, eigen_iters=10),
        ),
        "robustness": EvalTask(
            "robustness",
            "k",
            DATA,
            train=cfg,
            checkpoint=str(ckpt),
            robustness=RobustnessConfig(eps=1.0, attack=AttackConfig(steps=5), num_samples=40),
        ),
        "inversion": EvalTask(
            "inversion",
            "k",
            DATA,
            train=cfg,
            checkpoint=str(ckpt),
            inversion=InversionConfig(steps=10),
            num_images=3,
            artifact_path=str(tmp_path / "grid.png"),
        ),
        "finetune": EvalTask(
            "finetune",
            "k",
            DATA,
            train=cfg,
            checkpoint=str(ckpt),
            target=TARGET,
            finetune=FinetuneConfig(epochs=10, lr=0.1, batch_size=16),
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
    rob = out["robustness"]
    assert 0 <= rob["robust_acc"] <= rob["clean_acc"] <= 1 and rob["eval_attack"] == "pgd5"
    inv = out["inversion"]
    assert inv["n_images"] == 3 and Path(inv["grid_path"]).is_file() and inv["psnr"] > 0


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
        run_evaluation(EvalTask("nope", "k", DATA))
