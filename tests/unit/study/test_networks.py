"""Imported networks in a spec: the entry's rules, its key, where its file is looked for."""

from __future__ import annotations

import copy
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.networks import (
    checkpoint_cache,
    download_robustbench,
    resolve_networks,
    resolve_robustbench,
    robustbench_path,
)
from study.spec import CHECKPOINT_FORMATS, NetworkSpec, SpecError, SweepSpec, load_spec
from tests.packages import broken_package, without_package
from trainables.checkpoint_import import FORMATS, CheckpointImportError
from trainables.config import ArchRef, DatasetRef, ImportedConfig, LoadRequest, TrainConfig
from trainables.imported import cached_path, fetch_checkpoint

pytestmark = pytest.mark.unit

NETWORK = {
    "name": "madry-l2-0.5",
    "path": "zoo/cifar_l2_0_5.pt",
    "arch": "resnet50",
    "source": "cifar10",
    "norm": "l2",
    "eps": 0.5,
}


def spec_with(tmp_path: Path, *networks: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "name": "zoo",
        "networks": list(networks),
        "output": {"results_dir": str(tmp_path / "results")},
        **top,
    }


def load(tmp_path: Path, raw: dict[str, Any]) -> SweepSpec:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path)


def test_the_spec_and_the_importer_know_the_same_formats() -> None:
    assert CHECKPOINT_FORMATS == FORMATS


def test_a_study_of_networks_alone_is_valid(tmp_path: Path) -> None:
    spec = load(tmp_path, spec_with(tmp_path, NETWORK))
    assert spec.grid is None and spec.expand() == [] and spec.trial_count() == 1
    assert [s.dataset for s in spec.sources()] == ["cifar10"]


BAD = [
    (lambda n: n.update(robustbench="Carmon2019Unlabeled"), ["networks.0.path", "either path"]),
    (lambda n: n.pop("eps"), ["networks.0.eps", "missing", "0 for a standard network"]),
    (lambda n: n.pop("arch"), ["networks.0.arch", "registered arch"]),
    (lambda n: n.update(norm="linf", eps=8), ["networks.0.eps", "8/255"]),
    (lambda n: n.update(eps="1/0x"), ["networks.0.eps", "fraction"]),
    (lambda n: n.update(mean=[0.5, 0.5, 0.5]), ["networks.0.mean", "both mean and std"]),
    (lambda n: n.update(mean=[0.5], std=[0.2]), ["networks.0.mean", "per input channel (3)"]),
    (lambda n: n.update(format="pickle"), ["networks.0.format", "robustness", "safetensors"]),
    (lambda n: n.update(sha256="abc"), ["networks.0.sha256"]),
    (lambda n: n.update(arch="resnet5"), ["networks.0.arch.name", "choose one of"]),
]


@pytest.mark.parametrize("mutate,fragments", BAD)
def test_a_bad_entry_is_one_line_naming_its_field(
    tmp_path: Path, mutate: Any, fragments: list[str]
) -> None:
    network = copy.deepcopy(NETWORK)
    mutate(network)
    with pytest.raises(SpecError) as err:
        load(tmp_path, spec_with(tmp_path, network))
    line = str(err.value)
    assert len(line.splitlines()) == 1
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_networks_need_distinct_names_and_no_search(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"two networks are called 'madry-l2-0\.5'"):
        load(tmp_path, spec_with(tmp_path, NETWORK, NETWORK))
    search = {
        "source": "digits",
        "arch": "small_cnn",
        "space": {"eps": {"low": 0, "high": 1}},
        "objectives": [{"metric": "test_acc_clean"}],
        "num_trials": 2,
    }
    with pytest.raises(SpecError, match="a search proposes its own trials"):
        load(tmp_path, spec_with(tmp_path, NETWORK, search=search))
    with pytest.raises(SpecError, match="or networks"):
        load(tmp_path, {"name": "nothing"})


def imported(**changes: Any) -> ImportedConfig:
    base = ImportedConfig(
        source=DatasetRef("cifar10"),
        arch=ArchRef("resnet50"),
        norm="l2",
        eps=0.5,
        seed=0,
        sha256="a" * 64,
        name="madry",
    )
    return replace(base, **changes)


def test_an_imported_key_follows_the_file_and_labels_not_the_name() -> None:
    cfg = imported()
    assert imported(name="renamed").key == cfg.key
    for change in (
        {"sha256": "b" * 64},
        {"eps": 1.0},
        {"method": "trades"},
        {"seed": 1},
        {"mean": (0.5,) * 3, "std": (0.25,) * 3},
    ):
        assert imported(**change).key != cfg.key, change
    trained = TrainConfig(DatasetRef("cifar10"), ArchRef("resnet50"), "l2", 0.5, 0)
    assert trained.key != cfg.key and not trained.imported and cfg.imported
    assert cfg.attack_id == "pgd" and trained.attack_id == "pgd7"
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back.key == cfg.key


RB_ENTRY = NetworkSpec(robustbench="Carmon2019Unlabeled", dataset="cifar10", threat_model="Linf")


def test_a_robustbench_id_without_the_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_package(monkeypatch, "robustbench")
    with pytest.raises(SpecError) as raised:
        resolve_robustbench(0, RB_ENTRY)
    message = str(raised.value)
    assert "which is not installed" in message and "give arch in the entry" in message
    assert re.search(r"pip install --no-deps robustbench==1\.1\.1 .*'setuptools<80'", message)
    with pytest.raises(SpecError, match=r"downloading .* not installed: .*fetch the file to"):
        download_robustbench(0, RB_ENTRY, LoadRequest())


def test_a_robustbench_package_that_fails_to_import_is_named_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_package(monkeypatch, tmp_path, "robustbench")
    with pytest.raises(SpecError) as raised:
        resolve_robustbench(0, RB_ENTRY)
    message = str(raised.value)
    assert message.count("\n") == 0 and message.startswith("networks.0 (Carmon2019Unlabeled)")
    assert "installed but does not import" in message
    assert "No module named 'atsweep_absent_dependency'" in message
    assert "pip install --no-deps robustbench==1.1.1" in message


def test_a_robustbench_id_with_its_arch_resolves_radius_norm_and_cache_path(
    tmp_path: Path,
) -> None:
    entry = NetworkSpec(
        robustbench="Gowal2020Uncovering_70_16",
        dataset="cifar10",
        threat_model="L2",
        arch="wrn70_16",
    )
    resolved = resolve_robustbench(0, entry)
    assert (resolved.norm, resolved.eps, resolved.source.dataset) == ("l2", 0.5, "cifar10")  # type: ignore[union-attr]
    linf = resolve_robustbench(0, entry.model_copy(update={"threat_model": "Linf"}))
    assert linf.norm == "linf" and linf.eps == pytest.approx(8 / 255)
    load_request = LoadRequest(root=str(tmp_path / "data"))
    assert robustbench_path(entry, load_request) == (
        tmp_path / "data" / "models" / "cifar10" / "L2" / "Gowal2020Uncovering_70_16.pt"
    )


def test_a_missing_robustbench_file_names_the_command_that_fetches_it(tmp_path: Path) -> None:
    raw = spec_with(
        tmp_path,
        {
            "robustbench": "Rebuffi2021Fixing_70_16_cutmix_extra",
            "dataset": "cifar10",
            "threat_model": "L2",
            "arch": "wrn70_16",
            "mean": [0.4914, 0.4822, 0.4465],
            "std": [0.2471, 0.2435, 0.2616],
        },
        data={"root": str(tmp_path / "data")},
    )
    spec = load(tmp_path, raw)
    with pytest.raises(SpecError, match=r"networks\.0 .*is not there: .*load_model\("):
        resolve_networks(spec, LoadRequest(root=str(tmp_path / "data")), check=True)


def test_a_cached_url_is_used_without_download_and_its_sha256_checked(tmp_path: Path) -> None:
    url = "https://example.org/models/cifar_l2_0_5.pt?dl=1"
    local = cached_path(url, tmp_path)
    assert local.name == "cifar_l2_0_5.pt" and local.is_relative_to(tmp_path / "checkpoints")
    with pytest.raises(CheckpointImportError, match="download is off"):
        fetch_checkpoint(url, download=False, cache_dir=tmp_path)
    local.parent.mkdir(parents=True)
    local.write_bytes(b"weights")
    digest = "4ad33f8f6ac3e0d4a17fd3e7b8dd16e9d2fc1a02dc4f0bb54bfbd6b6a4c2a82a"
    with pytest.raises(CheckpointImportError, match=r"has sha256 .* not the"):
        fetch_checkpoint(url, download=False, cache_dir=tmp_path, sha256=digest)
    import hashlib

    right = hashlib.sha256(b"weights").hexdigest()
    assert fetch_checkpoint(url, download=False, cache_dir=tmp_path, sha256=right) == local


def test_the_checkpoint_cache_is_the_data_root_or_the_home_cache(tmp_path: Path) -> None:
    assert checkpoint_cache(LoadRequest(root=str(tmp_path))) == tmp_path
    assert checkpoint_cache(LoadRequest()) == Path.home() / ".cache" / "atsweep"


def test_a_robustbench_network_no_arch_reproduces_is_named() -> None:
    from torch import nn

    from study.networks import robustbench_architecture

    with pytest.raises(ValueError, match="its network is a Sequential, which no registered arch"):
        robustbench_architecture(nn.Sequential(nn.Linear(2, 2)))


def test_an_entry_is_named_by_its_name_its_robustbench_id_or_its_file() -> None:
    labels = {"arch": "resnet50", "source": "cifar10", "norm": "l2", "eps": 0.5}
    url = "https://www.dropbox.com/s/1zazwjfzee7c8i4/cifar_l2_0_5.pt?dl=1"
    assert NetworkSpec(path=url, **labels).label() == "cifar_l2_0_5.pt"
    assert NetworkSpec(path=url, name="madry", **labels).label() == "madry"
    rb = NetworkSpec(robustbench="Carmon2019Unlabeled", dataset="cifar10", threat_model="Linf")
    assert rb.label() == "Carmon2019Unlabeled"


def test_a_network_is_keyed_by_its_files_sha256_given_or_computed(tmp_path: Path) -> None:
    import hashlib

    from tests.published import safetensors_file
    from trainables.models import ModelInput, build_model

    model = build_model(ArchRef("small_cnn", 0.25), ModelInput(1, 8, (0.3,), (0.4,)), 5)
    path = safetensors_file(tmp_path / "net.safetensors", model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = {
        "path": str(path),
        "arch": {"name": "small_cnn", "width": 0.25},
        "source": {"dataset": "digits", "classes": [0, 1, 2, 3, 4]},
        "norm": "l2",
        "eps": 0.5,
    }
    for given in ({}, {"sha256": digest.upper()}):
        spec = load(tmp_path, spec_with(tmp_path, {**entry, **given}))
        (network,) = resolve_networks(spec, LoadRequest(), check=True)
        assert network.config.sha256 == digest and network.local == path
