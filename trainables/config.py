"""Frozen configurations of one training trial and its evaluations: plain data, no behaviour.

The study layer builds these from a sweep spec; everything in `trainables` takes them as
arguments. Their canonical JSON is what a trial_key or eval_key hashes, so every field here is
something that changes a result, and nothing else (no paths, no resources, no study name).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Bumped when a change to the code changes results for the same config, so old cache entries
# are not reused for new semantics.
KEY_VERSION = 1


@dataclass(frozen=True)
class DatasetRef:
    """A dataset and an optional subset of its classes (relabelled 0..k-1 in the given order)."""

    name: str
    classes: tuple[int, ...] | None = None

    @property
    def id(self) -> str:
        """A short readable name, used in metric names and table columns: digits, digits-c01234."""
        if self.classes is None:
            return self.name
        return f"{self.name}-c" + "".join(str(c) if c < 10 else f"_{c}_" for c in self.classes)


@dataclass(frozen=True)
class DataConfig:
    """How a dataset is split and where it lives (root is a location, not part of the key)."""

    test_fraction: float = 0.3
    split_seed: int = 0


@dataclass(frozen=True)
class ArchRef:
    """A registered architecture and its width multiplier."""

    name: str
    width: float = 1.0

    @property
    def id(self) -> str:
        return self.name if self.width == 1.0 else f"{self.name}-w{self.width:g}"


@dataclass(frozen=True)
class AttackConfig:
    """PGD settings: steps and step size; step_size None means 2.5 * eps / steps (Madry et al.)."""

    steps: int = 7
    step_size: float | None = None
    random_start: bool = True

    def alpha(self, eps: float) -> float:
        """The step size in pixel units for a given eps."""
        if self.step_size is not None:
            return self.step_size
        return 2.5 * eps / max(self.steps, 1)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (PAPER.md section 2 gives the CIFAR recipe)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_every: int = 50
    step_gamma: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one adversarially trained network."""

    source: DatasetRef
    arch: ArchRef
    norm: str
    eps: float
    seed: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    eval_attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=20))
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def key(self) -> str:
        return compute_key("train", self)


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probe: multinomial logistic regression with L2 strength chosen on validation."""

    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    val_fraction: float = 0.2
    max_iter: int = 500


@dataclass(frozen=True)
class FisherConfig:
    """Fisher information settings (PAPER.md section 4)."""

    num_samples: int = 128
    sigma: float = 1.0
    input_method: str = "hutchinson"
    probes: int = 16
    weight_fisher: str = "true"
    seed: int = 0


def to_canonical(obj: Any) -> Any:
    """A JSON-ready form with sorted keys and tuples as lists, stable across runs."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [to_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        # 1 and 1.0 are the same eps: hash them the same.
        return float(obj)
    return obj


def compute_key(kind: str, *parts: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a kind and its config parts."""
    payload = json.dumps(
        {"kind": kind, "version": KEY_VERSION, "parts": [to_canonical(p) for p in parts]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _build(tp: Any, value: Any) -> Any:
    """Rebuild a (possibly nested) dataclass field from its JSON form."""
    import dataclasses
    import typing

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            if arg is not type(None):
                return _build(arg, value)
    return value


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of dataclasses.asdict for TrainConfig (used where configs cross processes)."""
    result: TrainConfig = _build(TrainConfig, data)
    return result
