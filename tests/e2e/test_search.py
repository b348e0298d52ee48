"""An Optuna search end to end on digits: rows, runs, the durable Optuna study, resuming it."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml

from tests.conftest import run_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def search_spec(tmp: Path, num_trials: int) -> Path:
    spec = {
        "name": "search",
        "search": {
            "source": {"dataset": "digits", "classes": [0, 1, 2, 3, 4]},
            "arch": "small_cnn",
            "space": {
                "eps": {"low": 0.0, "high": 2.0},
                "lr": {"low": 1e-3, "high": 1e-2, "log": True},
            },
            "objectives": [
                {"metric": "test_acc_clean"},
                {"metric": "transfer:digits-c56789", "direction": "maximize"},
            ],
            "sampler": "nsga2",
            "num_trials": num_trials,
            "max_concurrent": 2,
        },
        "training": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "augment": "none"}
        | {"schedule": "cosine", "attack": {"steps": 2}, "eval_attack": {"steps": 2}},
        "data": {"max_per_class": 60, "max_test_per_class": 30},
        "evaluations": {
            "transfer": {"targets": [{"dataset": "digits", "classes": [5, 6, 7, 8, 9]}]}
            | {"c_grid": [1.0], "baselines": False},
            "fisher": {"enabled": False},
            "robustness": {"enabled": False},
            "inversion": {"enabled": False},
        },
        "output": {"results_dir": str(tmp / "results")},
    }
    path = tmp / f"search-{num_trials}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def optuna_trials(results: Path) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{results / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def test_a_search_runs_records_its_trials_and_resumes_its_optuna_study(tmp_path: Path) -> None:
    results = tmp_path / "results"
    first = run_study("run", str(search_spec(tmp_path, 3)), "--no-report", cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "search nsga2: 0 of 3 trials done, 3 to propose" in first.stdout

    trials = pd.read_parquet(results / "tables" / "trials")
    assert len(trials) == 3 and set(trials["proposed_by"]) == {"optuna:nsga2"}
    assert trials["eps"].between(0, 2).all() and trials["eps"].nunique() == 3
    transfer = pd.read_parquet(results / "tables" / "transfer")
    assert set(transfer["trial_key"]) == set(trials["trial_key"])  # the fan-out still runs
    done = optuna_trials(results)
    assert [t.number for t in done] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in done)
    # The sampler saw the same values the tables hold: clean accuracy and the probe's accuracy.
    by_eps = {round(t.params["eps"], 9): t.values for t in done}
    for row in trials.itertuples():
        clean, transfer_acc = by_eps[round(row.eps, 9)]
        assert clean == pytest.approx(row.test_acc_clean)
        probe = transfer[(transfer.trial_key == row.trial_key) & (transfer.kind == "probe")]
        assert transfer_acc == pytest.approx(probe["test_acc"].item())

    # A driver that died mid-search leaves a RUNNING Optuna trial; the next run marks it FAIL and
    # continues the same study with the remaining budget, under new trial numbers.
    optuna.load_study(study_name="search", storage=f"sqlite:///{results / 'optuna.db'}").ask()
    second = run_study("run", str(search_spec(tmp_path, 5)), "--no-report", cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "marked 1 Optuna trials FAIL" in second.stdout
    assert "search nsga2: 3 of 5 trials done, 2 to propose" in second.stdout
    done = optuna_trials(results)
    assert [t.number for t in done] == [0, 1, 2, 3, 4, 5]
    assert [t.state.name for t in done].count("COMPLETE") == 5
    assert done[3].state.name == "FAIL"
    trials = pd.read_parquet(results / "tables" / "trials")
    assert len(trials) == 5 and not trials["trial_key"].duplicated().any()

    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["search"])
    trial_runs = runs[runs["tags.atsweep.role"] == "trial"]
    assert len(trial_runs) == 5 and set(trial_runs["tags.atsweep.proposed_by"]) == {"optuna:nsga2"}
    assert "objective/transfer/digits-c56789" in "".join(runs.columns)
