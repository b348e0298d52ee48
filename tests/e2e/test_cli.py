"""The `study` command end to end on the smoke spec: rows, runs, re-runs and the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tests.conftest import run_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STUDY = str(Path(sys.executable).parent / "study")


def tables(results: Path) -> dict[str, pd.DataFrame]:
    return {
        n: pd.read_parquet(results / "tables" / n)
        for n in ("trials", "epochs", "transfer", "fisher", "robustness", "inversion")
    }


def test_run_writes_every_row_and_prints_the_table(smoke) -> None:  # type: ignore[no-untyped-def]
    _, results, first = smoke
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    t = tables(results)
    assert sorted(t["trials"]["eps"]) == [0.0, 0.5]
    assert len(t["epochs"]) == 2 * 2
    kinds = t["transfer"]["kind"].value_counts().to_dict()
    assert kinds == {"probe": 2, "random_init": 1, "raw_pixels": 1}
    assert t["fisher"]["kind"].value_counts().to_dict() == {"trained": 2, "random_init": 1}
    assert (t["fisher"]["input_trace"] > 0).all()
    assert (t["fisher"]["input_eig"] <= t["fisher"]["input_trace"] + 1e-9).all()
    rob = t["robustness"]
    assert len(rob) == 2 and (rob["robust_acc"] <= rob["clean_acc"]).all()
    assert set(rob["eval_eps"]) == {0.5}  # the standard L2 radius for a 32 px or smaller source
    inv = t["inversion"]
    assert sorted(inv["variant"]) == ["plain", "plain", "tv", "tv"]
    assert all(Path(p).is_file() for p in inv["grid_path"])
    for name in ("transfer[digits-c56789]", "input_fisher", "raw pixels", "random init"):
        assert name in first.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in first.stdout
    assert str(results / "tables") in first.stdout
    # Not a terminal: the progress in plain lines, one per epoch and a status line at the end.
    out = first.stdout.splitlines()
    for eps in ("0", "0.5"):
        for n in (1, 2):
            cell = f"digits-c01234 small_cnn l2 pgd3 eps={eps} seed=0"
            assert sum(ln.startswith(f"  epoch {n}/2 {cell} ") for ln in out) == 1, first.stdout
    assert (
        "trials 2/2 done, 0 running, 0 queued, 0 failed; evaluations 13 done, 0 queued, "
        "0 failed; nothing left"
    ) in [ln.split(": ", 1)[-1] for ln in out if ln.startswith("progress ")]
    for ckpt in t["trials"]["checkpoint_path"]:
        assert (Path(ckpt) / "model.safetensors").is_file()
    # Where the run's time went: printed, and kept in study.json with the run's own counts.
    last = json.loads((results / "study.json").read_text())["last_run"]
    assert (last["trials_done"], last["evals_done"]) == (2, 13)
    assert last["trial_time_s"] > 0 and last["eval_time_s"] > 0 and last["mlflow_s"] > 0
    share = (last["mlflow_s"] + last["parquet_s"]) / (last["trial_time_s"] + last["eval_time_s"])
    assert last["logging_share"] == pytest.approx(share)
    assert f"= {100 * share:.2f}% of the" in first.stdout
    # ... split between the trials' logging and the evaluations' (a run and a row each).
    assert 0 < last["eval_logging_s"] < last["mlflow_s"] + last["parquet_s"]
    trials = (last["mlflow_s"] + last["parquet_s"] - last["eval_logging_s"]) / last["trial_time_s"]
    assert last["trial_logging_share"] == pytest.approx(trials)
    assert last["eval_logging_share"] == pytest.approx(last["eval_logging_s"] / last["eval_time_s"])
    assert (
        f"(training {100 * trials:.2f}%, evaluations {100 * last['eval_logging_share']:.2f}%)"
        in first.stdout
    )


def test_mlflow_has_one_parent_and_its_nested_runs(smoke) -> None:  # type: ignore[no-untyped-def]
    _, results, _ = smoke
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    roles = runs["tags.atsweep.role"].value_counts().to_dict()
    # Per trial: transfer, Fisher, robustness, two inversions; once: the three baselines.
    assert roles == {"study": 1, "trial": 2, "evaluation": 13}
    parent = runs[runs["tags.atsweep.role"] == "study"]["run_id"].item()
    trials = runs[runs["tags.atsweep.role"] == "trial"]
    assert (trials["tags.mlflow.parentRunId"] == parent).all()
    evals = runs[runs["tags.atsweep.role"] == "evaluation"]
    assert set(evals["tags.mlflow.parentRunId"]) <= set(trials["run_id"]) | {parent}
    t = tables(results)
    assert set(t["trials"]["mlflow_run_id"]) == set(trials["run_id"])
    assert set(t["trials"]["trial_key"]) == set(trials["tags.trial_key"])
    assert set(runs["status"]) == {"FINISHED"}
    assert trials["metrics.test/acc_pgd"].notna().all()
    assert trials["metrics.inversion/plain/psnr"].notna().all()
    client = mlflow.MlflowClient()
    for kind, suffix in (("inversion", ".png"), ("fisher", ".json")):
        for run_id in evals[evals["tags.evaluation"] == kind]["run_id"]:
            assert any(f.path.endswith(suffix) for f in client.list_artifacts(run_id)), kind


def test_running_twice_adds_no_rows_and_no_runs(smoke) -> None:  # type: ignore[no-untyped-def]
    path, results, _ = smoke
    before = {n: len(df) for n, df in tables(results).items()}
    # The command's own code in a fresh process, to see what it imported: with nothing to
    # run, a re-run neither starts Ray nor imports it.
    code = (
        "import sys; from study.cli import main; "
        "code = main(['run', sys.argv[1], '--no-report']); print(code, 'ray' in sys.modules)"
    )
    second = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 cached, 0 to run" in second.stdout
    assert second.stdout.strip().splitlines()[-1] == "0 False"
    assert {n: len(df) for n, df in tables(results).items()} == before
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    assert len(mlflow.search_runs(experiment_names=["smoke"])) == 16  # 1 + 2 + 13


def test_extending_the_grid_runs_only_the_new_cells(smoke) -> None:  # type: ignore[no-untyped-def]
    """One more eps and one more target: one new trial, and only the new evaluations."""
    path, results, _ = smoke
    spec = yaml.safe_load(path.read_text())
    spec["grid"]["eps"] = [0.0, 0.5, 1.0]
    spec["evaluations"]["transfer"]["targets"].append({"dataset": "digits", "classes": [0, 1, 2]})
    extended = path.parent / "extended.yaml"
    extended.write_text(yaml.safe_dump(spec))
    before = tables(results)
    out = run_study("run", str(extended), "--no-report", "--quiet", cwd=path.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 cached, 1 to run" in out.stdout
    # --quiet: the trial's line and no progress (neither its epochs nor a status line).
    assert "[3/3] trial digits-c01234 small_cnn l2 pgd3 eps=1 seed=0" in out.stdout
    assert not any(ln.startswith(("  epoch ", "progress ")) for ln in out.stdout.splitlines())
    t = tables(results)
    assert sorted(t["trials"]["eps"]) == [0.0, 0.5, 1.0]
    assert len(t["epochs"]) == 3 * 2 and len(t["inversion"]) == 6
    # One more trained network; the untrained one of the same (arch, seed) is measured once.
    assert t["fisher"]["kind"].value_counts().to_dict() == {"trained": 3, "random_init": 1}
    assert not t["trials"]["trial_key"].duplicated().any()
    new = t["transfer"][~t["transfer"]["eval_key"].isin(before["transfer"]["eval_key"])]
    new_trial = set(t["trials"]["trial_key"]) - set(before["trials"]["trial_key"])
    # The new target: a probe per network (3) and its two baselines; the old target: a probe
    # of the new network only.
    by_target = new.groupby("target")["kind"].value_counts().to_dict()
    assert by_target == {
        ("digits-c012", "probe"): 3,
        ("digits-c012", "random_init"): 1,
        ("digits-c012", "raw_pixels"): 1,
        ("digits-c56789", "probe"): 1,
    }
    old_target = new[new["target"] == "digits-c56789"]
    assert set(old_target["trial_key"]) == new_trial


def test_a_gpu_request_no_local_node_holds_exits_2_before_training(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["resources"] = {"gpus_per_trial": 64}
    spec["output"] = {"results_dir": str(tmp_path / "results")}
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = run_study("run", str(path), cwd=tmp_path)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resources.gpus_per_trial = 64: larger than any node of the local Ray" in out.stderr
    assert len(pd.read_parquet(tmp_path / "results" / "tables" / "trials")) == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    assert list(runs["status"]) == ["FAILED"] and "gpus_per_trial" in runs["tags.error"].item()


def test_report_prints_the_tradeoff_table(smoke) -> None:  # type: ignore[no-untyped-def]
    _, results, _ = smoke
    out = run_study("report", str(results), cwd=results)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split()[:5] == ["source", "arch", "norm", "attack", "eps"]
    assert any(line.split()[4] == "0.5" for line in lines[2:])


def test_status_counts_the_trials_and_rows_in_the_tables(smoke) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = smoke
    out = run_study("status", str(path), cwd=path.parent)
    assert out.returncode == 0, out.stderr
    assert "trials done" in out.stdout and "fisher: " in out.stdout
    assert "trials running 0, failed 0, killed 0 (MLflow)" in out.stdout
    assert re.search(r"evaluations done [1-9]\d*, running 0, failed 0", out.stdout)


def test_report_on_a_folder_without_tables_exits_2(tmp_path: Path) -> None:
    out = run_study("report", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "no tables/ folder" in out.stderr
