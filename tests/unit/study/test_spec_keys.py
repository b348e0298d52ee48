"""A trial's key: computed once per config and cached, and the cache changes no key or copy of it.

A 10,000-cell grid reads each trial_key a dozen times (its table row, every evaluation's key and
row): `.key` is a cached property, and to_canonical reads a dataclass's fields without asdict's
deep copy. Both must leave every key byte for byte as it was: the reference below is the
asdict-based form the keys on disk were computed with.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle
from typing import Any

import pytest

import trainables.config as config_module
from study.spec import load_spec
from tests.conftest import ROOT
from trainables.config import (
    KEY_VERSION,
    ArchRef,
    AttackConfig,
    DataConfig,
    DatasetRef,
    EvalTask,
    FisherConfig,
    InversionConfig,
    InversionRequest,
    OptimConfig,
    ProbeConfig,
    RobustnessConfig,
    TrainConfig,
    compute_key,
    to_canonical,
)

pytestmark = pytest.mark.unit


def reference_canonical(obj: Any) -> Any:
    """to_canonical as the keys on disk were computed: through dataclasses.asdict."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): reference_canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [reference_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return float(obj)
    return obj


def reference_key(kind: str, *parts: Any) -> str:
    payload = json.dumps(
        {"kind": kind, "version": KEY_VERSION, "parts": [reference_canonical(p) for p in parts]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def a_config(**changes: Any) -> TrainConfig:
    cfg = TrainConfig(
        source=DatasetRef("digits", (0, 1, 12)),
        arch=ArchRef("small_cnn", 0.5),
        norm="l2",
        eps=1.0,
        seed=3,
        optim=OptimConfig(epochs=2, lr=0.003),
        attack=AttackConfig(method="pgd", steps=7, step_size=None),
        data=DataConfig(max_per_class=None, max_test_per_class=40),
    )
    return dataclasses.replace(cfg, **changes)


CONFIGS = [
    a_config(),
    a_config(source=DatasetRef("digits"), eps=0.0, deterministic=True),
    a_config(attack=AttackConfig(method="free", replays=3, step_size=0.25), eps=2),
    *load_spec(ROOT / "sweeps" / "demo.yaml").expand(),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.source.id + f"-eps{c.eps:g}")
def test_the_cached_key_is_the_key_computed_afresh_and_by_the_asdict_form(cfg: TrainConfig) -> None:
    fresh = copy.deepcopy(cfg)  # an uncached equal config
    assert "key" not in fresh.__dict__
    assert cfg.key == compute_key("train", fresh) == reference_key("train", fresh)
    assert to_canonical(cfg) == reference_canonical(fresh)


@pytest.mark.parametrize(
    "parts",
    [
        (DatasetRef("digits", (5, 6, 7)), DataConfig(), ProbeConfig()),
        (RobustnessConfig(0.5, "autoattack", AttackConfig(steps=20)),),
        (InversionRequest(InversionConfig(tv_weight=0.05)).config, 8),
        (FisherConfig(layer="features"), {"b": (1.0, 2), "a": [None, True]}),
        (EvalTask("fisher", "k", DataConfig(), FisherConfig(), train=a_config()),),
    ],
)
def test_to_canonical_gives_the_asdict_form_of_every_kind_of_part(parts: tuple[Any, ...]) -> None:
    assert [to_canonical(p) for p in parts] == [reference_canonical(p) for p in parts]
    assert compute_key("x", *parts) == reference_key("x", *parts)


def test_the_key_is_computed_once_per_config(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = a_config()
    calls: list[str] = []
    real = config_module.compute_key

    def counting(kind: str, *parts: Any) -> str:
        calls.append(kind)
        return real(kind, *parts)

    monkeypatch.setattr(config_module, "compute_key", counting)
    first = cfg.key
    assert cfg.key is first and cfg.key is first
    assert calls == ["train"]


def test_a_changed_field_gives_another_key_and_an_unchanged_one_the_same() -> None:
    cfg = a_config()
    key = cfg.key
    for changes in ({"seed": 4}, {"eps": 0.5}, {"arch": ArchRef("small_cnn", 1.0)}):
        other = dataclasses.replace(cfg, **changes)
        assert "key" not in other.__dict__  # replace copies the fields, not the cache
        assert other.key != key
        assert other.key == compute_key("train", other)
    assert dataclasses.replace(cfg).key == key


def test_the_cache_is_no_field_of_the_config() -> None:
    cfg, fresh = a_config(), a_config()
    _ = cfg.key
    assert [f.name for f in dataclasses.fields(cfg)] == [
        f.name for f in dataclasses.fields(TrainConfig)
    ]
    assert dataclasses.asdict(cfg) == dataclasses.asdict(fresh)
    assert "key" not in dataclasses.asdict(cfg) and "key" not in to_canonical(cfg)
    assert cfg == fresh and hash(cfg) == hash(fresh)
    assert repr(cfg) == repr(fresh)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.key = "0" * 16


def test_pickling_round_trips_and_carries_no_cached_key() -> None:
    cfg = a_config()
    uncached = pickle.dumps(cfg)
    key = cfg.key
    data = pickle.dumps(cfg)
    assert data == uncached  # the same bytes as before the key was read
    back = pickle.loads(data)
    assert back == cfg and "key" not in back.__dict__
    assert back.key == key
    assert copy.deepcopy(cfg).key == key and copy.copy(cfg).key == key


def test_the_file_pipeline_version_is_in_the_keys_of_file_backed_datasets_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change to how image files become tensors (FILE_PIPELINE_VERSION) re-keys the trials on
    a file-backed source and the evaluations on a file-backed target, and nothing else."""
    from study.evaluations import raw_pixel_key, transfer_key

    probe, data = ProbeConfig(), DataConfig()

    def keys() -> dict[str, str]:
        files = TrainConfig(DatasetRef("cub200"), ArchRef("tv_resnet18"), "l2", 3.0, 0)
        memory = TrainConfig(DatasetRef("cifar10"), ArchRef("resnet18"), "l2", 0.5, 0)
        return {
            "train files": files.key,
            "train memory": memory.key,
            "transfer to files": transfer_key(memory.key, DatasetRef("flowers102"), data, probe),
            "transfer to memory": transfer_key(memory.key, DatasetRef("cifar100"), data, probe),
            "raw files": raw_pixel_key(DatasetRef("dtd"), data, probe),
            "raw memory": raw_pixel_key(DatasetRef("svhn"), data, probe),
        }

    before = keys()
    # The in-memory keys are those computed without any pipeline part: unchanged by this change.
    memory = TrainConfig(DatasetRef("cifar10"), ArchRef("resnet18"), "l2", 0.5, 0)
    assert before["train memory"] == compute_key("train", memory)
    monkeypatch.setattr(config_module, "FILE_PIPELINE_VERSION", 99)
    after = keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"train files", "transfer to files", "raw files"}
