"""One study mixing sources, architectures and attack methods runs end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import run_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_mixed_grid_runs_every_cell_and_transfers_across_formats(tmp_path: Path) -> None:
    from tests.dataset_fixtures import write_fashion_mnist

    data = tmp_path / "data"
    # A small format-exact Fashion-MNIST (torchvision layout) beside scikit-learn's digits.
    write_fashion_mnist(data, n_train=80, n_test=40, seed=0)
    spec = {
        "name": "mixed",
        "grid": {
            "sources": [
                {"dataset": "digits", "classes": [0, 1, 2, 3]},
                {"dataset": "fashion_mnist", "classes": [0, 1, 2, 3]},
            ],
            "archs": ["small_cnn", {"name": "preact_resnet18", "width": 0.125}],
            "norms": ["linf"],
            "eps": ["8/255"],
            "seeds": [0],
            "attacks": [{"method": "pgd", "steps": 2}, "fgsm_rs"],
        },
        "training": {
            "epochs": 1,
            "batch_size": 32,
            "augment": "flip",
            "schedule": "cosine",
            "eval_attack": {"steps": 2},
        },
        "data": {"root": str(data), "max_per_class": 10},
        "evaluations": {
            "transfer": {"targets": [{"dataset": "digits", "classes": [5, 6, 7]}], "c_grid": [1.0]},
            "fisher": {"num_samples": 8, "probes": 2, "eigen_iters": 2},
            "robustness": {"enabled": False},
            "inversion": {"enabled": False},
        },
        "output": {"results_dir": str(tmp_path / "results")},
    }
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = run_study("run", str(path), "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results" / "tables" / "trials")
    assert len(trials) == 2 * 2 * 2
    assert set(trials["source"]) == {"digits-c0123", "fashion_mnist-c0123"}
    assert set(trials["attack"]) == {"pgd2", "fgsm_rs"}
    assert set(trials["arch"]) == {"small_cnn", "preact_resnet18-w0.125"}
    transfer = pd.read_parquet(tmp_path / "results" / "tables" / "transfer")
    probes = transfer[transfer["kind"] == "probe"]
    # 28 px Fashion-MNIST networks read 8 px digits through the same probe.
    assert len(probes) == 8 and probes["test_acc"].between(0, 1).all()
    fisher = pd.read_parquet(tmp_path / "results" / "tables" / "fisher")
    # Each network, and the untrained network of each (source, arch, seed): the reference.
    assert fisher["kind"].value_counts().to_dict() == {"trained": 8, "random_init": 4}
    untrained = fisher[fisher["kind"] == "random_init"]
    assert untrained["eps"].isna().all() and untrained["trial_key"].isna().all()
    assert set(zip(untrained["source"], untrained["arch"], strict=True)) == {
        (s, a) for s in trials["source"] for a in trials["arch"]
    }
