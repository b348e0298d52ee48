"""Sweep specs: expansion, stable keys, and one-line errors for every kind of bad input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from study.cli import main
from study.spec import SpecError, SweepSpec, load_spec
from trainables.config import train_config_from_dict

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def base_spec(tmp_path: Path) -> dict[str, Any]:
    return {
        "name": "unit",
        "grid": {
            "sources": [{"dataset": "digits", "classes": [0, 1, 2, 3, 4]}],
            "archs": ["small_cnn", {"name": "resnet18", "width": 0.25}],
            "norms": ["l2"],
            "eps": [0, 0.5],
            "seeds": [0, 1],
        },
        "evaluations": {
            "transfer": {"targets": [{"dataset": "digits", "classes": [5, 6, 7, 8, 9]}]}
        },
        "output": {"results_dir": str(tmp_path / "results")},
    }


def write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_demo_spec_is_valid_and_has_the_required_grid() -> None:
    spec = load_spec(ROOT / "sweeps" / "demo.yaml")
    eps = spec.grid.eps
    assert len(eps) >= 4 and 0 in eps and len(spec.grid.seeds) >= 2


def test_grid_expands_to_the_cartesian_product_with_distinct_stable_keys(tmp_path: Path) -> None:
    spec = SweepSpec.model_validate(base_spec(tmp_path))
    configs = spec.expand()
    assert len(configs) == 1 * 2 * 1 * 2 * 2
    keys = [c.key for c in configs]
    assert len(set(keys)) == len(keys)
    again = SweepSpec.model_validate(base_spec(tmp_path)).expand()
    assert [c.key for c in again] == keys


def test_key_ignores_output_and_resources_but_not_training(tmp_path: Path) -> None:
    raw = base_spec(tmp_path)
    keys = [c.key for c in SweepSpec.model_validate(raw).expand()]
    other = copy.deepcopy(raw)
    other["output"] = {"results_dir": str(tmp_path / "elsewhere")}
    other["resources"] = {"cpus_per_trial": 2}
    other["name"] = "renamed"
    assert [c.key for c in SweepSpec.model_validate(other).expand()] == keys
    changed = copy.deepcopy(raw)
    changed["training"] = {"lr": 0.05}
    assert not set(c.key for c in SweepSpec.model_validate(changed).expand()) & set(keys)


def test_integer_and_float_eps_hash_the_same(tmp_path: Path) -> None:
    a = base_spec(tmp_path)
    b = copy.deepcopy(a)
    b["grid"]["eps"] = [0.0, 0.5]
    assert [c.key for c in SweepSpec.model_validate(a).expand()] == [
        c.key for c in SweepSpec.model_validate(b).expand()
    ]


def test_fractions_are_accepted_for_linf(tmp_path: Path) -> None:
    raw = base_spec(tmp_path)
    raw["grid"]["norms"] = ["linf"]
    raw["grid"]["eps"] = [0, "8/255"]
    spec = SweepSpec.model_validate(raw)
    assert spec.grid.eps[1] == pytest.approx(8 / 255)


def test_config_round_trips_through_plain_dicts(tmp_path: Path) -> None:
    from dataclasses import asdict

    for cfg in SweepSpec.model_validate(base_spec(tmp_path)).expand():
        back = train_config_from_dict(asdict(cfg))
        assert back == cfg and back.key == cfg.key


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


BAD_SPECS = [
    # (mutation, fragments the one-line error must contain)
    (
        lambda s: s["grid"]["sources"][0].update(dataset="digitz"),
        ["grid.sources.0.dataset", "'digitz'", "choose one of", "digits"],
    ),
    (
        lambda s: s["grid"]["archs"].append("resnet1"),
        ["grid.archs.2.name", "'resnet1'", "choose one of", "resnet18", "small_cnn"],
    ),
    (lambda s: s["grid"].update(eps=[0, -0.5]), ["grid.eps", "-0.5", ">= 0"]),
    (lambda s: s["grid"].update(eps=[0, float("nan")]), ["grid.eps", "nan", "finite"]),
    (lambda s: s["grid"].update(norms=["linf"], eps=[0, 8]), ["grid", "8", "linf", "8/255"]),
    (lambda s: s["grid"].update(seeds=[]), ["grid.seeds", "empty", "at least one"]),
    (lambda s: s["grid"].update(epss=[0.1]), ["grid.epss", "did you mean 'eps'"]),
    (lambda s: s.update(trainig={"epochs": 3}), ["trainig", "did you mean 'training'"]),
    (lambda s: s["grid"]["sources"][0].update(classes=[0, 12]), ["classes", "12", "0..9"]),
]


@pytest.fixture
def untouchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray and MLflow raise if touched: a bad spec must be rejected before either starts."""
    import mlflow.tracking
    import ray

    def touched(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray or MLflow was touched for a bad spec")

    monkeypatch.setattr(ray, "init", touched)
    monkeypatch.setattr(mlflow.tracking.MlflowClient, "__init__", touched)


@pytest.mark.parametrize("mutate,fragments", BAD_SPECS)
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    untouchable: None,
    mutate: Any,
    fragments: list[str],
) -> None:
    raw = base_spec(tmp_path)
    mutate(raw)
    path = write(tmp_path, raw)
    for command in ("validate", "run"):
        code, out, err = run_cli([command, str(path)], capsys)
        assert code == 2
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "results").exists(), "a bad spec must write nothing"


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert "nope.yaml" in err and "not found" in err and len(err.strip().splitlines()) == 1


def test_invalid_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ngrid: [1, 2\n")
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 2 and "line" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from study.spec import SpecError

    with pytest.raises(SpecError):
        main(["--debug", "validate", str(tmp_path / "nope.yaml")])


def test_validate_prints_each_trial_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, base_spec(tmp_path))
    code, out, _ = run_cli(["validate", str(path)], capsys)
    assert code == 0
    for cfg in load_spec(path).expand():
        assert cfg.key in out
    assert "8 trials" in out
    assert not (tmp_path / "results").exists()


def test_missing_data_fails_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], untouchable: None
) -> None:
    raw = base_spec(tmp_path)
    raw["grid"]["sources"] = [{"dataset": "cifar10", "classes": [0, 1]}]
    raw["data"] = {"root": str(tmp_path / "empty")}
    path = write(tmp_path, raw)
    code, out, err = run_cli(["run", str(path)], capsys)
    assert code == 2 and out == ""
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert "cifar10" in line and str(tmp_path / "empty") in line and "download" in line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_sweep_is_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.expand() or spec.search is not None or spec.networks


def test_training_defaults_are_the_cifar_recipe(tmp_path: Path) -> None:
    cfg = SweepSpec.model_validate(base_spec(tmp_path)).expand()[0]
    o = cfg.optim
    assert (o.optimizer, o.lr, o.momentum, o.weight_decay, o.batch_size) == (
        "sgd",
        0.1,
        0.9,
        5e-4,
        128,
    )
    assert (o.epochs, o.schedule, o.step_every, o.step_gamma) == (150, "step", 50, 0.1)
    assert (o.augment, o.crop_padding) == ("crop_flip", 4)
    assert (cfg.attack.method, cfg.attack.steps, cfg.eval_attack.steps) == ("pgd", 7, 20)
    assert cfg.attack.alpha(0.5) == pytest.approx(2.5 * 0.5 / 7)


def test_the_standard_augmentation_is_each_sources_own_recipe(tmp_path: Path) -> None:
    """augment standard (the default): crop_flip below 128 px, RandomResizedCrop + flip from
    128 px; an explicit augment applies to every source; data.workers and training.compile are
    run settings, outside every key."""
    raw = base_spec(tmp_path)
    raw["grid"]["sources"] = [{"dataset": "digits"}, {"dataset": "cub200"}]
    raw["grid"]["archs"] = ["tv_resnet18"]
    cells = SweepSpec.model_validate(raw).expand()
    assert {c.source.name: c.optim.augment for c in cells} == {
        "digits": "crop_flip",
        "cub200": "resized_crop_flip",
    }
    explicit = {**raw, "training": {**raw.get("training", {}), "augment": "crop_flip"}}
    again = SweepSpec.model_validate(explicit).expand()
    digits = [c.key for c in cells if c.source.name == "digits"]
    assert digits == [c.key for c in again if c.source.name == "digits"]
    assert {c.optim.augment for c in again} == {"crop_flip"}
    tuned = {
        **raw,
        "data": {**raw.get("data", {}), "workers": 3},
        "training": {**raw.get("training", {}), "compile": True},
    }
    spec = SweepSpec.model_validate(tuned)
    assert [c.key for c in spec.expand()] == [c.key for c in cells]
    assert spec.training.run_options().compile is True
    with pytest.raises((ValidationError, SpecError), match="workers"):
        SweepSpec.model_validate({**raw, "data": {"workers": -1}})


def test_a_grid_can_mix_sources_archs_and_attack_methods(tmp_path: Path) -> None:
    raw = base_spec(tmp_path)
    raw["grid"]["sources"].append({"dataset": "fashion_mnist", "classes": [0, 1]})
    raw["grid"]["attacks"] = [
        {"method": "pgd", "steps": 3},
        "fgsm_rs",
        {"method": "free", "replays": 2},
    ]
    configs = SweepSpec.model_validate(raw).expand()
    assert len(configs) == 2 * 2 * 1 * 3 * 2 * 2
    assert {c.attack.id for c in configs} == {"pgd3", "fgsm_rs", "free2"}
    assert {c.source.name for c in configs} == {"digits", "fashion_mnist"}
    assert len({c.key for c in configs}) == len(configs)


def test_free_is_not_an_evaluation_attack(tmp_path: Path) -> None:
    raw = base_spec(tmp_path)
    raw["training"] = {"eval_attack": {"method": "free"}}
    with pytest.raises(SpecError, match=r"training\.eval_attack\.method"):
        load_spec(write(tmp_path, raw))


def test_the_inversion_starts_at_the_mean_image_unless_told_otherwise(tmp_path: Path) -> None:
    raw = base_spec(tmp_path)
    configs = [c for _, c in load_spec(write(tmp_path, raw)).evaluations.inversion.configs()]
    assert {(c.start, c.restarts) for c in configs} == {("mean_image", 1)}
    raw["evaluations"] = {"inversion": {"start": "noise", "restarts": 4}}
    configs = [c for _, c in load_spec(write(tmp_path, raw)).evaluations.inversion.configs()]
    assert {(c.start, c.restarts) for c in configs} == {("noise", 4)}
    for bad, field in [({"start": "grey"}, "start"), ({"restarts": 0}, "restarts")]:
        raw["evaluations"] = {"inversion": bad}
        with pytest.raises(SpecError, match=rf"evaluations\.inversion\.{field}"):
            load_spec(write(tmp_path, raw))


def robustness_kinds(spec: SweepSpec) -> list[str]:
    source = spec.sources()[0]
    classes = len(source.classes) if source.classes else 10
    return [c.id for c in spec.evaluations.robustness.configs(source.dataset, "l2", classes)]


def test_autoattack_runs_by_default_where_torchattacks_and_four_classes_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torchattacks")
    raw = base_spec(tmp_path)
    assert robustness_kinds(load_spec(write(tmp_path, raw))) == ["pgd20", "autoattack"]
    three = copy.deepcopy(raw)
    three["grid"]["sources"] = [{"dataset": "digits", "classes": [0, 1, 2]}]
    assert robustness_kinds(load_spec(write(tmp_path, three))) == ["pgd20"]
    with pytest.raises(SpecError, match=r"evaluations\.robustness\.autoattack.*3 here"):
        three["evaluations"]["robustness"] = {"autoattack": True}
        load_spec(write(tmp_path, three))
    off = copy.deepcopy(raw)
    off["evaluations"]["robustness"] = {"autoattack": False}
    assert robustness_kinds(load_spec(write(tmp_path, off))) == ["pgd20"]


def test_without_torchattacks_auto_is_pgd_and_true_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.packages import without_package

    without_package(monkeypatch, "torchattacks")
    raw = base_spec(tmp_path)
    assert robustness_kinds(load_spec(write(tmp_path, raw))) == ["pgd20"]
    raw["evaluations"]["robustness"] = {"autoattack": True}
    with pytest.raises(SpecError, match=r"autoattack.*pip install --no-deps 'torchattacks>=3\.5'"):
        load_spec(write(tmp_path, raw))


def test_autoattack_can_be_kept_to_some_radii_and_the_first_images(tmp_path: Path) -> None:
    pytest.importorskip("torchattacks")
    raw = base_spec(tmp_path)
    raw["evaluations"]["robustness"] = {
        "eps": [0.5, 1.0],
        "num_samples": 200,
        "autoattack_eps": [0.5],
        "autoattack_samples": 30,
    }
    spec = load_spec(write(tmp_path, raw))
    configs = spec.evaluations.robustness.configs("digits", "l2", 5)
    assert [(c.id, c.eps, c.num_samples) for c in configs] == [
        ("pgd20", 0.5, 200),
        ("autoattack", 0.5, 30),
        ("pgd20", 1.0, 200),
    ]
    raw["evaluations"]["robustness"]["autoattack_seeds"] = [1]
    seeds = load_spec(write(tmp_path, raw)).evaluations.robustness
    assert [c.id for c in seeds.configs("digits", "l2", 5, seed=0)] == ["pgd20", "pgd20"]
    assert [c.id for c in seeds.configs("digits", "l2", 5, seed=1)][1] == "autoattack"
    raw["evaluations"]["robustness"]["autoattack_eps"] = [2.0]
    with pytest.raises(SpecError, match=r"autoattack_eps\.0.*2\.0 is not one of"):
        load_spec(write(tmp_path, raw))
