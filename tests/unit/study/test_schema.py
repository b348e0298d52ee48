"""The spec's JSON Schema (`study schema`) accepts every documented form and rejects typos."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from study.cli import main
from study.schema import spec_json_schema
from study.spec import SweepSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

VALIDATOR = jsonschema.Draft202012Validator(spec_json_schema())


def readme_specs() -> list[dict[str, Any]]:
    """The README's YAML blocks that are whole specs (a name and a grid, search or networks)."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    specs = [yaml.safe_load(b) for b in blocks]
    return [
        s
        for s in specs
        if isinstance(s, dict) and "name" in s and {"grid", "search", "networks"} & set(s)
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_sweep_validates_against_the_schema(path: Path) -> None:
    VALIDATOR.validate(yaml.safe_load(path.read_text()))


def test_the_readmes_specs_validate_against_the_schema_and_the_model() -> None:
    specs = readme_specs()
    assert specs, "the README shows at least one whole spec"
    for spec in specs:
        VALIDATOR.validate(spec)
        SweepSpec.model_validate(spec)


def test_the_shorthands_are_accepted_as_the_model_accepts_them() -> None:
    spec = {
        "name": "short",
        "grid": {
            "sources": ["digits"],
            "archs": ["small_cnn", {"name": "resnet18", "width": 0.25}],
            "norms": ["linf"],
            "eps": [0, "1/255", "8/255", 0.5],
            "seeds": [0],
            "attacks": ["pgd", {"method": "fgsm_rs"}],
        },
        "evaluations": {
            "transfer": {"targets": ["digits"]},
            "robustness": {"eps": ["standard", "4/255"]},
        },
    }
    VALIDATOR.validate(spec)
    SweepSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("where", "bad"),
    [
        (("grid",), {"epss": [0]}),  # a misspelt key
        ((), {"trainin": {}}),
        (("training",), {"augment": "random"}),  # not a choice
        (("grid",), {"eps": ["8 over 255"]}),  # not a number or fraction
        (("grid",), {"attacks": ["pgdd"]}),  # an attack by an unknown name
    ],
)
def test_a_typo_does_not_validate(where: tuple[str, ...], bad: dict[str, Any]) -> None:
    grid = {"sources": ["digits"], "archs": ["small_cnn"], "norms": ["l2"], "eps": [0]}
    spec: dict[str, Any] = {"name": "typo", "grid": {**grid, "seeds": [0]}, "training": {}}
    VALIDATOR.validate(spec)
    node = spec
    for key in where:
        node = node[key]
    node.update(bad)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(spec)


def test_study_schema_prints_it_and_study_version_names_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == spec_json_schema()
    out = tmp_path / "atsweep.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == spec_json_schema()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"atsweep {version('atsweep')}"
