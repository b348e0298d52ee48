"""Validating a spec imports no torch and still sees the datasets and models registered at run time.

The driver validates a sweep before anything starts (`study validate`, `study run`): it reads the
torch-free trainables.catalog, so it does not pay seconds for importing torch and torchvision.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.spec import SpecError, SweepSpec, load_spec
from trainables import catalog

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SWEEPS = ("demo", "smoke", "search", "cifar10", "fashion")
HEAVY = ("torch", "torchvision")

# Run in a fresh interpreter: this test process has imported torch long before.
VALIDATE_EVERY_SWEEP = textwrap.dedent(
    """
    import contextlib, io, json, sys

    from study.spec import load_spec
    import study.cli

    out = {"after_import": [m for m in HEAVY if m in sys.modules], "sweeps": {}}
    for name in SWEEPS:
        spec = load_spec(f"sweeps/{name}.yaml")
        trials = len(spec.expand()) if spec.search is None else 0
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = study.cli.main(["validate", f"sweeps/{name}.yaml"])
        out["sweeps"][name] = {
            "trials": trials,
            "code": code,
            "printed": printed.getvalue(),
            "heavy": [m for m in HEAVY if m in sys.modules],
        }
    print(json.dumps(out))
    """
)


def test_validating_every_sweep_imports_no_torch() -> None:
    script = f"SWEEPS = {SWEEPS!r}\nHEAVY = {HEAVY!r}\n{VALIDATE_EVERY_SWEEP}"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["after_import"] == [], "importing study.spec and study.cli imported torch"
    assert set(out["sweeps"]) == set(SWEEPS)
    for name, result in out["sweeps"].items():
        assert result["code"] == 0, (name, result["printed"])
        assert result["heavy"] == [], f"validating sweeps/{name}.yaml imported {result['heavy']}"
    # The validation really ran: grids expanded, and the command printed its trial table.
    assert out["sweeps"]["demo"]["trials"] > 0
    assert "trial_key" in out["sweeps"]["demo"]["printed"]
    assert "Optuna search" in out["sweeps"]["search"]["printed"]


def load(tmp_path: Path, dataset: str, arch: str, classes: list[int] | None = None) -> SweepSpec:
    """load_spec of a one-trial grid on this dataset and arch (as `study validate` reads it)."""
    source: dict[str, Any] = {"dataset": dataset}
    if classes is not None:
        source["classes"] = classes
    raw = {
        "name": "registered",
        "grid": {"sources": [source], "archs": [arch], "norms": ["l2"], "eps": [0], "seeds": [0]},
        "evaluations": {"transfer": {"targets": [source]}},
        "output": {"results_dir": str(tmp_path / "results")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path)


@pytest.fixture
def scratch_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog and the torch registries as they were, after a test that registers names."""
    from trainables import data
    from trainables.models import registry

    monkeypatch.setattr(catalog, "_DATASETS", dict(catalog._DATASETS))
    monkeypatch.setattr(catalog, "_MODELS", set(catalog._MODELS))
    monkeypatch.setattr(data, "_REGISTRY", data.dataset_loaders())
    monkeypatch.setattr(registry, "_REGISTRY", registry.model_specs())


def test_runtime_registrations_are_seen_by_spec_validation(
    scratch_registries: None, tmp_path: Path
) -> None:
    from torch import nn

    from trainables.data import ImageSet, LoadRequest, register_dataset
    from trainables.data.vision import register_image_folder
    from trainables.models import ModelInput, register_model

    with pytest.raises(SpecError, match="unknown dataset"):
        load(tmp_path, "unit_blobs", "small_cnn")
    with pytest.raises(SpecError, match="unknown arch"):
        load(tmp_path, "digits", "unit_mlp")

    def never_loaded(request: LoadRequest) -> tuple[ImageSet, None]:
        raise AssertionError("validating a spec must not load its data")

    register_dataset(
        catalog.DatasetInfo("unit_blobs", 4, 1, 8, (0.5,), (0.25,), "four blobs"), never_loaded
    )

    @register_model("unit_mlp")
    def _mlp(inputs: ModelInput, width: float) -> tuple[nn.Module, int]:
        return nn.Flatten(), inputs.channels * inputs.size**2

    spec = load(tmp_path, "unit_blobs", "unit_mlp", classes=[0, 3])
    assert [(c.source.id, c.arch.name) for c in spec.expand()] == [("unit_blobs-c03", "unit_mlp")]
    # The registered info is what a class subset is checked against (4 classes: labels 0..3).
    with pytest.raises(SpecError, match=r"classes \[4\] do not exist in unit_blobs"):
        load(tmp_path, "unit_blobs", "unit_mlp", classes=[0, 4])

    register_image_folder("unit_folder", tmp_path / "folder", num_classes=2, size=16)
    assert catalog.get_dataset_info("unit_folder").num_classes == 2
    assert load(tmp_path, "unit_folder", "small_cnn").transfer_targets()[0].name == "unit_folder"
