"""Resource requests: fractional GPUs, and requests checked against a cluster's node types."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.cli import main
from study.resources import NodeType, check_resources, node_types_from_config, node_types_from_yaml
from study.spec import ResourcesSpec, SpecError, SweepSpec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CLUSTER = ROOT / "cluster.yaml"


def smoke_with(tmp_path: Path, **resources: object) -> Path:
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["resources"] = resources
    spec["output"] = {"results_dir": str(tmp_path / "results")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("gpus", [0.0, 0.25, 0.5, 1.0, 2.0, 8.0])
def test_fractions_of_one_gpu_and_whole_gpus_are_accepted(gpus: float) -> None:
    assert ResourcesSpec(gpus_per_trial=gpus, gpus_per_eval=gpus).gpus_per_trial == gpus


@pytest.mark.parametrize("field", ["gpus_per_trial", "gpus_per_eval"])
def test_a_fraction_above_one_gpu_is_a_spec_error(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}[\\s\\S]*fractions of one only"):
        SweepSpec.model_validate({"name": "x", "grid": {"eps": [0.0]}, "resources": {field: 1.5}})


def test_the_repository_cluster_yaml_declares_every_node_type() -> None:
    types = {t.name: t for t in node_types_from_yaml(CLUSTER)}
    assert all(t.cpus is not None and t.gpus is not None for t in types.values())
    assert max(t.gpus for t in types.values() if t.gpus is not None) >= 1


def test_requests_that_fit_a_node_type_pass() -> None:
    types = node_types_from_yaml(CLUSTER)
    largest = max(types, key=lambda t: (t.gpus or 0, t.cpus or 0))
    assert largest.gpus and largest.cpus
    check_resources(
        ResourcesSpec(cpus_per_trial=largest.cpus, gpus_per_trial=largest.gpus), types, "c.yaml"
    )
    check_resources(ResourcesSpec(gpus_per_trial=0.25, gpus_per_eval=0.5), types, "c.yaml")


def test_more_gpus_than_any_node_names_the_field_value_and_node_types() -> None:
    types = node_types_from_yaml(CLUSTER)
    most = max(t.gpus or 0 for t in types)
    with pytest.raises(SpecError) as err:
        check_resources(ResourcesSpec(gpus_per_trial=most * 2), types, "cluster.yaml")
    text = str(err.value)
    assert f"resources.gpus_per_trial = {most * 2:g}" in text
    assert "cluster.yaml" in text and all(t.name in text for t in types)
    with pytest.raises(SpecError, match=r"resources\.gpus_per_eval = "):
        check_resources(ResourcesSpec(gpus_per_eval=most + 1), types, "cluster.yaml")


def test_more_cpus_than_any_node_names_the_cpu_field() -> None:
    types = [NodeType("a", 8, 0), NodeType("b", 4, 1)]
    with pytest.raises(SpecError, match=r"resources.cpus_per_trial = 16: larger than any node"):
        check_resources(ResourcesSpec(cpus_per_trial=16), types, "here")


def test_a_combination_no_single_node_holds_is_an_error() -> None:
    types = [NodeType("cpu", 8, 0), NodeType("gpu", 4, 1)]
    check_resources(ResourcesSpec(cpus_per_trial=4, gpus_per_trial=1), types, "here")
    with pytest.raises(SpecError, match=r"cpus_per_trial = 8 with gpus_per_trial = 1"):
        check_resources(ResourcesSpec(cpus_per_trial=8, gpus_per_trial=1), types, "here")


def test_undeclared_resources_are_unknown_and_never_reject() -> None:
    types = node_types_from_config(
        {"available_node_types": {"auto": {"node_config": {}}, "cpu": {"resources": {"CPU": 2}}}}
    )
    assert types == [NodeType("auto", None, None), NodeType("cpu", 2.0, None)]
    check_resources(ResourcesSpec(cpus_per_trial=64, gpus_per_trial=8), types, "here")


def test_validate_and_submit_check_the_cluster_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        main(["validate", str(smoke_with(tmp_path, gpus_per_trial=1)), "--cluster", str(CLUSTER)])
        == 0
    )
    capsys.readouterr()
    spec = smoke_with(tmp_path, gpus_per_trial=64)
    for command in (["validate"], ["submit", "--address", "http://127.0.0.1:9"]):
        assert main([*command, str(spec), "--cluster", str(CLUSTER)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "resources.gpus_per_trial = 64" in err
    assert main(["validate", str(spec), "--cluster", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "not found" in err
