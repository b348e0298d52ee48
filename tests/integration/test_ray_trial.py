"""A real Tune trial and a real evaluation task on a local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables.checkpoint import read_manifest
from trainables.config import (
    ArchRef,
    AttackConfig,
    DataConfig,
    DatasetRef,
    EvalTask,
    OptimConfig,
    ProbeConfig,
    TrainConfig,
)
from trainables.payload import PAYLOAD_KEY, TrialPayload

pytestmark = pytest.mark.integration


def test_tune_trial_reports_each_epoch_and_checkpoints(ray_local: None, tmp_path: Path) -> None:
    import ray
    from ray import tune

    from trainables.tune_entry import evaluate_remote, train_trial

    cfg = TrainConfig(
        source=DatasetRef("digits", (0, 1, 2)),
        arch=ArchRef("small_cnn", 0.5),
        norm="linf",
        eps=0.1,
        seed=0,
        optim=OptimConfig(epochs=2, batch_size=64, lr=0.05),
        attack=AttackConfig(steps=2),
        eval_attack=AttackConfig(steps=3),
    )
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space={PAYLOAD_KEY: TrialPayload(cfg).to_tune()},
        run_config=tune.RunConfig(name="one", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    result = results[0]
    assert result.error is None
    assert result.metrics["epoch"] == 1
    assert 0 <= result.metrics["test/acc_pgd"] <= result.metrics["test/acc_clean"] <= 1
    assert len(result.metrics_dataframe) == 2
    ckpt = Path(result.checkpoint.path)
    assert read_manifest(ckpt)["epoch"] == 1

    task = EvalTask(
        "transfer",
        "k",
        cfg.data,
        train=cfg,
        checkpoint=str(ckpt),
        target=DatasetRef("digits", (5, 6)),
        settings=ProbeConfig(c_grid=(1.0,)),
    )
    out = ray.get(evaluate_remote.options(num_cpus=1).remote(task))
    assert 0.5 <= out["test_acc"] <= 1 and out["wall_time_s"] > 0
    raw = EvalTask(
        "raw_pixels",
        "r",
        DataConfig(),
        target=DatasetRef("digits", (5, 6)),
        settings=ProbeConfig(c_grid=(1.0,)),
    )
    assert ray.get(evaluate_remote.remote(raw))["test_acc"] > 0.9


def test_a_tune_trial_on_an_image_folder_decodes_in_its_own_worker_processes(
    ray_local: None, tmp_path: Path
) -> None:
    """CINIC-10's ImageFolder layout (JPEGs the test writes): a trial holding 2 CPUs with
    data.workers 1 decodes through a DataLoader worker forked from the Ray worker."""
    from ray import tune

    from tests.dataset_fixtures import write_jpeg_folder
    from trainables.config import LoadRequest
    from trainables.tune_entry import train_trial

    classes = [f"class{c}" for c in range(10)]
    for split in ("train", "test"):
        write_jpeg_folder(tmp_path / "data" / "cinic10" / split, classes, 2, sides=(32, 40))
    cfg = TrainConfig(
        source=DatasetRef("cinic10"),
        arch=ArchRef("small_cnn", 0.25),
        norm="l2",
        eps=0.25,
        seed=0,
        optim=OptimConfig(epochs=2, batch_size=8, lr=0.05, augment="crop_flip"),
        attack=AttackConfig(steps=1),
        eval_attack=AttackConfig(steps=2),
    )
    load = LoadRequest(root=str(tmp_path / "data"), workers=1)
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 2}),
        param_space={PAYLOAD_KEY: TrialPayload(cfg, load=load).to_tune()},
        run_config=tune.RunConfig(name="folder", storage_path=str(tmp_path / "runs"), verbose=0),
    )
    result = tuner.fit()[0]
    assert result.error is None
    assert len(result.metrics_dataframe) == 2
    assert result.metrics["throughput/train_img_s"] > 0
    assert 0 <= result.metrics["test/acc_pgd"] <= result.metrics["test/acc_clean"] <= 1
