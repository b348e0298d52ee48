"""The notebook entry point's spec handling: a path, a dict or a SweepSpec, with overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.notebook import spec_from
from study.spec import SpecError, load_spec
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

SMOKE = ROOT / "sweeps" / "smoke.yaml"


def test_a_path_a_dict_and_a_spec_give_the_same_study() -> None:
    import yaml

    from_file = spec_from(SMOKE)
    assert from_file == load_spec(SMOKE)
    assert spec_from(yaml.safe_load(SMOKE.read_text())) == from_file
    assert spec_from(from_file) == from_file


def test_overrides_set_dotted_keys_before_validation(tmp_path: Path) -> None:
    spec = spec_from(
        SMOKE,
        {
            "training.epochs": 1,
            "grid.eps": [0, "8/255"],
            "evaluations.fisher.enabled": False,
            "output.results_dir": str(tmp_path / "r"),
        },
    )
    assert spec.training.epochs == 1 and spec.grid is not None
    assert spec.grid.eps == [0.0, pytest.approx(8 / 255)]
    assert not spec.evaluations.fisher.enabled and spec.results_dir() == str(tmp_path / "r")
    # The file itself is unchanged, and a SweepSpec takes overrides too.
    assert load_spec(SMOKE).training.epochs == 2
    assert spec_from(spec, {"training.epochs": 3}).training.epochs == 3


def test_a_misspelt_override_is_the_spec_error_a_file_would_give() -> None:
    with pytest.raises(SpecError, match=r"unknown key 'epoch': did you mean 'epochs'\?"):
        spec_from(SMOKE, {"training.epoch": 1})
    with pytest.raises(SpecError, match=r"override 'name.x'"):
        spec_from(SMOKE, {"name.x": 1})
