"""Results and checkpoints on S3 (a real S3 endpoint, moto's server, on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from analysis import load_table
from study.sinks.parquet import ParquetSink, part_files, read_table
from tests.conftest import ListReporter, run_study, start_study
from trainables import storage
from trainables.checkpoint import find_latest_valid_checkpoint, read_manifest
from trainables.config import ArchRef, DataConfig, DatasetRef, OptimConfig, TrainConfig
from trainables.data import build_dataset
from trainables.training import run_training

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def upload_tree(local: Path, location: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(location, *path.relative_to(local).parts))


def test_tables_on_s3_are_written_whole_and_read_back(s3_env: dict[str, str]) -> None:
    tables = "s3://results/unit/tables"
    sink = ParquetSink(tables)
    row = {"trial_key": "a", "epoch": 0, "train_loss": 1.0}
    assert sink.append("epochs", [row, {**row, "epoch": 1}]) == 2
    assert ParquetSink(tables).append("epochs", [row]) == 0  # the key is known after a reopen
    folder = storage.join(tables, "epochs")
    assert all(p.startswith("s3://results/unit/tables/epochs/part-") for p in part_files(folder))
    # Objects appear only when complete: no temporary is ever written next to the parts.
    assert not [n for n, _ in storage.list_dir(folder) if not n.startswith("part-")]
    assert sorted(read_table(folder, "epochs").column("epoch").to_pylist()) == [0, 1]
    assert sorted(load_table("s3://results/unit", "epochs")["epoch"]) == [0, 1]


def test_resume_from_s3_skips_a_corrupted_newest_checkpoint(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    from trainables.tune_entry import _local_attempt

    cfg = TrainConfig(
        source=DatasetRef("digits", (0, 1, 2)),
        arch=ArchRef("small_cnn", 0.5),
        norm="l2",
        eps=0.0,
        seed=0,
        optim=OptimConfig(epochs=2, batch_size=32, optimizer="adam", lr=3e-3),
        data=DataConfig(max_per_class=20, max_test_per_class=10),
    )
    rep = ListReporter(tmp_path / "kept")
    run_training(cfg, build_dataset(cfg.source, cfg.data), rep)
    trial = tmp_path / "trial"
    for i, ckpt in enumerate(rep.checkpoints):
        shutil.copytree(ckpt, trial / f"checkpoint_{i:06d}")
    bad = trial / "checkpoint_000001" / "model.safetensors"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    attempt = "s3://results/resume/ray/study/key-20260101-000000"
    upload_tree(trial, attempt)

    local = _local_attempt(attempt)
    assert not str(local).startswith("s3:") and local.is_dir()
    found, warnings = find_latest_valid_checkpoint([local])
    assert found is not None and found.name == "checkpoint_000000"
    assert read_manifest(found)["epoch"] == 0
    assert len(warnings) == 1 and "checkpoint_000001" in warnings[0] and "sha256" in warnings[0]


def test_a_study_with_an_s3_results_root(s3_env: dict[str, str], tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    results = "s3://results/studies/smoke"
    spec["output"] = {"results_dir": results, "tracking_uri": f"sqlite:///{tmp_path / 'ml.db'}"}
    spec["evaluations"]["fisher"] = {"enabled": False}  # covered on local roots; S3 is the point
    spec["evaluations"]["robustness"] = {"enabled": False}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, **s3_env}

    def run() -> subprocess.CompletedProcess[str]:
        return run_study("run", str(path), "--no-report", cwd=tmp_path, env=env)

    # Two drivers started together: the lease (a conditional PUT on S3) lets one run.
    both = [start_study("run", str(path), "--no-report", cwd=tmp_path, env=env) for _ in range(2)]
    outs = [d.communicate(timeout=600)[0] for d in both]
    assert sorted(d.returncode for d in both) == [0, 2], outs
    first = next(out for d, out in zip(both, outs, strict=True) if d.returncode == 0)
    refused = next(out for d, out in zip(both, outs, strict=True) if d.returncode == 2)
    assert "is being run by" in refused and len(refused.strip().splitlines()) == 1, refused
    assert f"parquet tables: {results}/tables" in first
    assert not (tmp_path / "results").exists()  # nothing went to a local results folder

    trials = load_table(results, "trials")
    assert sorted(trials["eps"]) == [0.0, 0.5]
    for ckpt in trials["checkpoint_path"]:
        assert ckpt.startswith(f"{results}/ray/smoke/")
        assert storage.exists(storage.join(ckpt, "model.safetensors"))
    assert len(load_table(results, "epochs")) == 4
    assert len(load_table(results, "fisher")) == 0
    assert len(load_table(results, "transfer")) == 4
    grids = load_table(results, "inversion")["grid_path"]
    assert len(grids) == 4 and all(g.startswith(f"{results}/artifacts/inversion/") for g in grids)
    assert all(storage.read_bytes(g)[:8] == b"\x89PNG\r\n\x1a\n" for g in grids)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'ml.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    assert set(runs["status"]) == {"FINISHED"} and len(runs) == 11
    client = mlflow.MlflowClient()
    assert client.get_experiment_by_name("smoke").artifact_location == f"{results}/mlartifacts"
    inversion = runs[runs["tags.evaluation"] == "inversion"]["run_id"]
    assert all(client.list_artifacts(run_id) for run_id in inversion)

    second = run()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 cached, 0 to run" in second.stdout
    assert len(load_table(results, "transfer")) == 4
    assert len(mlflow.search_runs(experiment_names=["smoke"])) == 11

    status = run_study("status", str(path), cwd=tmp_path, env=env)
    assert "2/2 trials done" in status.stdout, status.stderr


def test_the_study_lease_on_s3(s3_env: dict[str, str]) -> None:
    """Refused while held, taken over when stale, and of eight drivers at once exactly one."""
    import threading

    from study.lease import LeaseHeldError, LeaseLostError, StudyLease, read_lease

    root = "s3://results/leases/one"
    now = [1_000_000.0]
    holder = StudyLease(root, 60.0, say=lambda _: None, clock=lambda: now[0])
    assert holder.acquire().generation == 1
    with pytest.raises(LeaseHeldError, match="is being run by"):
        StudyLease(root, 60.0, say=lambda _: None, clock=lambda: now[0]).acquire()
    now[0] += 61
    said: list[str] = []
    taker = StudyLease(root, 60.0, say=said.append, clock=lambda: now[0])
    assert taker.acquire().generation == 2 and "taking over" in said[0]
    with pytest.raises(LeaseLostError):
        holder.check()
    taker.release()
    record = read_lease(root)
    assert record is not None and record.generation == 2 and record.released_at is not None

    race_root, start = "s3://results/leases/race", threading.Barrier(8)
    won, refused = [], []

    def try_acquire() -> None:
        candidate = StudyLease(race_root, 60.0, say=lambda _: None)
        start.wait()
        try:
            candidate.acquire()
            won.append(candidate)
        except LeaseHeldError:
            refused.append(candidate)

    threads = [threading.Thread(target=try_acquire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    won[0].release()


def test_readers_during_a_compaction_on_s3_see_every_row_once(s3_env: dict[str, str]) -> None:
    from tests.integration.test_parquet import read_while_compacting

    read_while_compacting("s3://results/compaction/tables", parts=6)
