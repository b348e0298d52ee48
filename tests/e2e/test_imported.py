"""A study over published networks: three imported digits networks beside one trained cell.

The networks are written in the published formats (tests/published.py): the robustness
library's AttackerModel dict, RobustBench's state dict and our safetensors. Nothing is
downloaded. Every bad entry is refused by `study validate` (and `study run`) in one line with
exit 2, before anything is written.
"""

from __future__ import annotations

import json
import pickle
import re
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from analysis.tables import load_table, tradeoff_table
from tests.conftest import ROOT, run_study
from tests.packages import without_package
from tests.published import (
    robustbench_file,
    robustness_file,
    safetensors_file,
)
from trainables.catalog import get_dataset_info
from trainables.config import ArchRef
from trainables.models import Classifier, ModelInput, build_model

pytestmark = pytest.mark.e2e

SOURCE = {"dataset": "digits", "classes": [0, 1, 2, 3, 4]}
ARCH = {"name": "resnet18", "width": 0.125}


def published_network(seed: int, classes: int = 5) -> Classifier:
    info = get_dataset_info("digits")
    torch.manual_seed(seed)
    inputs = ModelInput(info.channels, info.size, info.mean, info.std)
    return build_model(ArchRef("resnet18", 0.125), inputs, classes).eval()


def entry(name: str, path: Path, eps: float, **more: Any) -> dict[str, Any]:
    return {"name": name, "path": str(path), "arch": ARCH, "source": SOURCE, "norm": "l2"} | {
        "eps": eps,
        **more,
    }


def write_spec(folder: Path, networks: list[dict[str, Any]], with_grid: bool = True) -> Path:
    raw = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    raw["name"] = "imported"
    raw["grid"]["eps"] = [0.0]
    if not with_grid:
        del raw["grid"]
    raw["networks"] = networks
    # One inversion variant and one C: every kind still runs, in less of CI's time.
    raw["evaluations"]["inversion"]["variants"] = [{"name": "plain"}]
    raw["evaluations"]["transfer"]["c_grid"] = [1.0]
    raw["output"] = {"results_dir": str(folder / "results")}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def zoo(folder: Path) -> list[dict[str, Any]]:
    """Three published networks at three eps labels, in three formats."""
    return [
        entry(
            "madry-l2-0",
            robustness_file(folder / "zoo" / "l2_0.pt", published_network(1), "linear"),
            0.0,
            format="robustness",
        ),
        entry(
            "rb-l2-0.5",
            robustbench_file(folder / "zoo" / "l2_0_5.pt", published_network(2), "linear"),
            0.5,
            method="trades",
        ),
        entry(
            "own-l2-1",
            safetensors_file(folder / "zoo" / "l2_1.safetensors", published_network(3)),
            1.0,
        ),
    ]


def runs(results: Path) -> pd.DataFrame:
    """Every MLflow run of the study: its role, status and whether it is tagged imported."""
    with sqlite3.connect(results / "mlflow.db") as con:
        return pd.read_sql(
            "select r.run_uuid, r.status, "
            "max(case when t.key = 'atsweep.role' then t.value end) as role, "
            "max(case when t.key = 'imported' then t.value end) as imported "
            "from runs r join tags t on t.run_uuid = r.run_uuid group by r.run_uuid",
            con,
        )


EVAL_TABLES = ("transfer", "fisher", "robustness", "inversion")


def test_a_study_of_imported_networks_and_a_trained_cell(tmp_path: Path) -> None:
    networks = zoo(tmp_path)
    spec = write_spec(tmp_path, networks)
    results = tmp_path / "results"
    first = run_study("run", str(spec), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 networks to import" in first.stdout

    trials = load_table(results, "trials")
    assert len(trials) == 4 and trials["trial_key"].is_unique
    imported = trials[trials["proposed_by"] == "imported"]
    assert sorted(imported["attack"]) == ["pgd", "pgd", "trades"]
    assert sorted(imported["eps"]) == [0.0, 0.5, 1.0]
    # Nothing trained them here: the training columns are null, the checkpoint's sha256 and
    # where it came from are in the row's config.
    assert imported[["epochs", "lr", "attack_steps", "train_time_s"]].isna().all().all()
    configs = [json.loads(text) for text in imported["config_json"]]
    assert all(len(c["sha256"]) == 64 for c in configs)
    assert {c["imported_from"]["format"] for c in configs} == {
        "robustness",
        "robustbench",
        "safetensors",
    }
    for checkpoint in imported["checkpoint_path"]:
        assert (Path(checkpoint) / "model.safetensors").is_file()

    # The same fan-out as the trained cell, plus the source accuracy of each imported network.
    keys = set(trials["trial_key"])
    for table in EVAL_TABLES:
        rows = load_table(results, table)
        assert keys <= set(rows["trial_key"].dropna()), table
        assert rows["eval_key"].is_unique
    source = load_table(results, "source")
    assert set(source["trial_key"]) == set(imported["trial_key"])
    assert source[["test_acc_clean", "test_acc_pgd"]].notna().all().all()

    mlflow = runs(results)
    assert (mlflow["status"] == "FINISHED").all()
    trial_runs = mlflow[mlflow["role"] == "trial"]
    assert len(trial_runs) == 4 and (trial_runs["imported"] == "true").sum() == 3
    evaluations = sum(len(load_table(results, t)) for t in (*EVAL_TABLES, "source"))
    assert (mlflow["role"] == "evaluation").sum() == evaluations

    # The trade-off table and the report include the imported rows, with their source accuracy.
    table = tradeoff_table(results)
    trained = table[table["row_kind"] == "trained"]
    assert len(trained) == 4 and set(trained["attack"]) == {"pgd3", "pgd", "trades"}
    assert trained["clean_mean"].notna().all() and (trained["seeds"] == 1).all()
    report = (results / "report" / "report.md").read_text()
    assert "trades" in report and "resnet18-w0.125" in report

    # A re-run computes nothing.
    again = run_study("run", str(spec), "--no-report", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 cached, 0 to run, 0 networks to import), 0 evaluations queued" in again.stdout
    assert len(load_table(results, "trials")) == 4

    # New bytes in one file: that network only is imported and evaluated again, and the
    # analysis counts the new network in place of the old one, never both.
    path = Path(networks[2]["path"])
    weights = load_file(str(path))
    weights["head.bias"] = weights["head.bias"] + torch.arange(5.0)
    save_file(weights, str(path))
    before = {t: len(load_table(results, t)) for t in (*EVAL_TABLES, "source")}
    changed = run_study("run", str(spec), "--no-report", cwd=tmp_path)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "3 cached, 0 to run, 1 networks to import" in changed.stdout
    after = {t: len(load_table(results, t)) for t in (*EVAL_TABLES, "source")}
    per_network = {"transfer": 1, "fisher": 1, "robustness": 1, "inversion": 1, "source": 1}
    assert {t: after[t] - before[t] for t in after} == per_network
    table = tradeoff_table(results)
    trained = table[table["row_kind"] == "trained"]
    assert len(trained) == 4 and (trained["seeds"] == 1).all()


class Payload:
    """An object whose unpickling writes a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "ran"))


def planted_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    return path


def bad_entries(folder: Path) -> list[tuple[str, dict[str, Any], str]]:
    good = robustbench_file(folder / "good.pt", published_network(1), "linear")
    ten = robustbench_file(folder / "ten.pt", published_network(1, classes=10), "linear")
    return [
        ("missing file", entry("gone", folder / "gone.pt", 0.0), r"gone\.pt does not exist"),
        (
            "planted pickle",
            entry("evil", planted_pickle(folder / "evil.pt", folder / "ran"), 0.0),
            r"refused to load .*evil\.pt: it pickles Python objects",
        ),
        (
            "keys of another arch",
            entry("wrong", good, 0.0) | {"arch": {"name": "preact_resnet18", "width": 0.125}},
            r"does not match arch 'preact_resnet18'.* missing .* unexpected",
        ),
        (
            "a head of another class count",
            entry("ten", ten, 0.0),
            r"head has 10 classes but the model's source has 5",
        ),
        ("unknown format", entry("fmt", good, 0.0, format="pickle"), r"unknown checkpoint format"),
        (
            "a URL with download off",
            entry("url", good, 0.0) | {"path": "https://example.org/zoo/cifar_l2_0_5.pt"},
            r"not in the cache .* download is off: set download: true",
        ),
        (
            "a RobustBench id without the package",
            {"robustbench": "Carmon2019Unlabeled", "dataset": "cifar10", "threat_model": "Linf"},
            r"needs the robustbench package.*pip install --no-deps robustbench==1\.1\.1",
        ),
    ]


def test_every_bad_entry_is_one_line_and_exit_2_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI's main in this process: what `study validate` runs, without a torch import each.
    from study.cli import main

    without_package(monkeypatch, "robustbench")

    cases = bad_entries(tmp_path)
    for what, bad, message in cases:
        spec = write_spec(tmp_path, [bad], with_grid=False)
        code = main(["validate", str(spec)])
        out, err = capsys.readouterr()
        assert code == 2, (what, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("study: "), (what, err)
        assert "networks.0" in lines[0] and re.search(message, lines[0]), (what, lines[0])
        assert not out, what
    assert not (tmp_path / "ran").exists(), "the planted pickle ran"
    # `study run` checks the same before anything is written (a real process, as users run it).
    spec = write_spec(tmp_path, [cases[2][1]])
    done = run_study("run", str(spec), cwd=tmp_path)
    assert done.returncode == 2 and "does not match arch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
